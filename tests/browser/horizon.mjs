// The Horizon plugin's journey in headless Chromium (run by
// tests/e2e/tests/horizon.rs, which starts Keystone users, navigator-server,
// Horizon and two echo servers, and checks traffic at the checkpoints):
//
//   a member logs in, lands on Project > Network > Port Forwards, creates a
//   TCP forward to echo server one and sees it Active (traffic checked),
//   retargets it to echo server two (traffic checked), sees a bad port
//   rejected next to the field, deletes it (single), creates two more and
//   deletes both (bulk), after a third one on an external port that another
//   program holds shows Error with Navigator's reason; a member of another project sees none of alice's
//   forwards; a POST without the CSRF token is refused; with Navigator
//   stopped the panel shows Horizon's error message, not a traceback.

import { run, env, step, screenshot, checkpoint, eventually, assert, log, focusPage } from './lib.mjs';

const base = env('HORIZON_URL');
const panel = `${base}/project/port_forwards/`;
const target = env('TARGET_IP');
const portOne = env('TARGET_PORT_ONE');
const portTwo = env('TARGET_PORT_TWO');
const region = env('NAVIGATOR_REGION');

async function login(page, user, password) {
    // Horizon logs in to Keystone's region; Navigator is registered in the
    // test's own region, which the user picks as in the header's region menu.
    const switchRegion = `/auth/switch_services_region/${encodeURIComponent(region)}/?next=/project/port_forwards/`;
    await page.goto(`${base}/auth/login/?next=${encodeURIComponent(switchRegion)}`);
    await page.fill('#id_username', user);
    await page.fill('#id_password', password);
    await Promise.all([page.waitForURL(panel), page.click('#loginBtn')]);
    await page.waitForSelector('table#port_forwards');
}

const row = (page, id) => page.locator(`table#port_forwards tr[data-object-id="${id}"]`);

async function openModal(page, trigger, formId) {
    await page.click(trigger);
    await page.waitForSelector(`form#${formId}`, { state: 'visible' });
}

/** Submits the open modal form and waits until the modal or its errors come back. */
async function submitModal(page, formId) {
    await page.click(`form#${formId} input.btn-primary[type=submit]`);
    await eventually(`the ${formId} modal to close or show errors`, async () => {
        const open = await page.locator(`form#${formId}`).count();
        if (open === 0) return true;
        return (await page.locator(`form#${formId} .has-error, form#${formId} .alert-danger`).count()) > 0;
    });
}

async function rowIds(page) {
    return page.locator('table#port_forwards tbody tr[data-object-id]').evaluateAll(
        (rows) => rows.map((r) => r.getAttribute('data-object-id')));
}

async function createForward(page, { ip, port, protocol = 'tcp', description = '', externalPort = '' }) {
    const before = await rowIds(page);
    await openModal(page, '#port_forwards__action_create', 'create_port_forward_form');
    await page.fill('#id_internal_ip_address', ip);
    await page.fill('#id_internal_port', String(port));
    await page.selectOption('#id_protocol', protocol);
    if (description) await page.fill('#id_description', description);
    if (externalPort) await page.fill('#id_external_port', String(externalPort));
    await submitModal(page, 'create_port_forward_form');
    // On success Horizon's JS follows the redirect back to the table.
    return eventually('the new row', async () => {
        const errors = await page.locator('form#create_port_forward_form .has-error, .alert-danger').allInnerTexts();
        if (errors.length) throw new Error(`the form shows errors: ${errors.join(' | ')}`);
        const fresh = (await rowIds(page)).filter((id) => !before.includes(id));
        return fresh.length === 1 && fresh[0];
    });
}

async function cellText(page, id, column) {
    // Horizon renders one <td> per column, in the table's column order.
    const headers = await page.locator('table#port_forwards thead tr.table_column_header th').allInnerTexts();
    const index = headers.findIndex((h) => h.trim().toLowerCase() === column.toLowerCase());
    assert(index >= 0, `no column ${column} in ${JSON.stringify(headers)}`);
    return (await row(page, id).locator('td').nth(index).innerText()).trim();
}

async function waitForStatus(page, id, status) {
    return eventually(`forward ${id} to be ${status}`, async () => {
        await page.goto(panel);
        const text = await cellText(page, id, 'Status');
        if (text.startsWith('Error')) throw new Error(`forward is ${text}`);
        return text.startsWith(status) ? text : false;
    });
}

await run('horizon', async ({ page, launch }) => {
    await step('log in as a member', () => login(page, env('ALICE_USER'), env('ALICE_PASSWORD')));
    await screenshot(page, 'empty-panel');

    let first;
    await step('create a forward to echo server one', async () => {
        first = await createForward(page, { ip: target, port: portOne, description: 'horizon journey' });
    });
    await step('see it ACTIVE', () => waitForStatus(page, first, 'Active'));
    const external = await cellText(page, first, 'External Address');
    assert((await cellText(page, first, 'Target')) === `${target}:${portOne}`, 'target column');
    assert((await cellText(page, first, 'Protocol')) === 'TCP', 'protocol column');
    assert((await cellText(page, first, 'Proxy')).length > 0, 'proxy column');
    await screenshot(page, 'forward-active');
    await checkpoint('forward-active', { id: first, external, tag: 'one' });

    await step('retarget it to echo server two', async () => {
        await openModal(page, `#port_forwards__row_${first}__action_retarget`, 'retarget_port_forward_form');
        await page.fill('#id_internal_port', String(portTwo));
        await submitModal(page, 'retarget_port_forward_form');
        await eventually('the new target in the table', async () => {
            await page.goto(panel);
            return (await cellText(page, first, 'Target')) === `${target}:${portTwo}`;
        });
    });
    await waitForStatus(page, first, 'Active');
    await checkpoint('forward-retargeted', { id: first, external, tag: 'two' });

    await step('a bad port shows the field error', async () => {
        await openModal(page, '#port_forwards__action_create', 'create_port_forward_form');
        await page.fill('#id_internal_ip_address', target);
        await page.fill('#id_internal_port', '70000');
        await submitModal(page, 'create_port_forward_form');
        const error = page.locator('form#create_port_forward_form .form-group.has-error').filter({
            has: page.locator('#id_internal_port'),
        });
        await error.waitFor();
        const text = await error.locator('.help-block').innerText();
        log(`field error: ${text}`);
        assert(/65535/.test(text), `the internal port's error names the range: ${text}`);
        await screenshot(page, 'bad-port');
        await page.goto(panel);
    });

    await step('a member of another project sees none of it', async () => {
        const other = await launch();
        focusPage(other.page);
        try {
            await login(other.page, env('BOB_USER'), env('BOB_PASSWORD'));
            const ids = await rowIds(other.page);
            assert(ids.length === 0, `bob sees forwards ${JSON.stringify(ids)}`);
            await screenshot(other.page, 'other-project');
            const response = await other.page.goto(`${base}/project/port_forwards/${first}/retarget/`);
            assert(!(await other.page.locator('form#retarget_port_forward_form').count()),
                `bob opened alice's retarget form (HTTP ${response && response.status()})`);
        } finally {
            focusPage(page);
            await other.close();
        }
    });

    await step('a POST without the CSRF token is refused; the session cookie is HttpOnly', async () => {
        const response = await page.request.post(`${base}/project/port_forwards/create/`, {
            form: { internal_ip_address: target, internal_port: portOne, protocol: 'tcp' },
            maxRedirects: 0,
        });
        // Horizon's CSRF failure view sends the user to the login page.
        const location = response.headers().location || '';
        assert(response.status() === 302 && location.includes('csrf_failure'),
            `POST without CSRF token answered ${response.status()} ${location}`);
        await page.goto(panel);
        assert((await rowIds(page)).length === 1, 'the refused POST created nothing');
        const cookies = await page.context().cookies(base);
        const session = cookies.find((c) => c.name === 'sessionid');
        assert(session && session.httpOnly, `session cookie is HttpOnly: ${JSON.stringify(session)}`);
        assert(!page.url().includes('token'), `no token in the URL ${page.url()}`);
    });

    await step('delete it (single)', async () => {
        await page.goto(panel);
        await row(page, first).locator('.dropdown-toggle').click();
        await page.click(`#port_forwards__row_${first}__action_delete`);
        await page.click('.modal.in .modal-footer .btn-danger, .modal.in .modal-footer .btn-primary');
        await eventually('the row to disappear', async () => {
            await page.goto(panel);
            return (await row(page, first).count()) === 0;
        });
    });
    await checkpoint('forward-deleted', { id: first, external });

    await step('create three, one failing with a reason, and delete them all (bulk)', async () => {
        const a = await createForward(page, { ip: target, port: portOne, description: 'bulk a' });
        const b = await createForward(page, { ip: target, port: portTwo, protocol: 'udp', description: 'bulk b' });
        const busy = env('BUSY_EXTERNAL_PORT');
        const c = await createForward(page, { ip: target, port: portOne, externalPort: busy, description: 'port held elsewhere' });
        const status = await eventually(`forward ${c} to be Error`, async () => {
            await page.goto(panel);
            const text = await cellText(page, c, 'Status');
            return text.startsWith('Error') && text;
        });
        log(`status with reason: ${status}`);
        assert(status.length > 'Error'.length + 3, `the Error status carries a reason: ${status}`);
        await waitForStatus(page, a, 'Active');
        await waitForStatus(page, b, 'Active');
        await screenshot(page, 'three-forwards');
        for (const id of [a, b, c]) {
            // Horizon's themed checkbox: the input is hidden behind its label.
            await row(page, id).locator('td.multi_select_column label').click();
            assert(await row(page, id).locator('input.table-row-multi-select').isChecked(), `row ${id} selected`);
        }
        await page.click('#port_forwards__action_delete');
        await page.click('.modal.in .modal-footer .btn-danger, .modal.in .modal-footer .btn-primary');
        await eventually('both rows to disappear', async () => {
            await page.goto(panel);
            return (await rowIds(page)).length === 0;
        });
    });

    await checkpoint('stop-api', {});
    await step('with Navigator down the panel shows an error message', async () => {
        await page.goto(panel);
        const alert = page.locator('.alert-danger, .alert-error').first();
        await alert.waitFor();
        const text = await alert.innerText();
        log(`error message: ${text}`);
        assert(/Navigator \(port forwarding\) is unavailable/.test(text), `error message: ${text}`);
        assert(!(await page.locator('text=Traceback').count()), 'no traceback');
        await screenshot(page, 'api-down');
    });
});
