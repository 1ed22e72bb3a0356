// The built-in dashboard's journey in a real browser, driven by
// tests/e2e/tests/dashboard.rs (which starts navigator-server, Keystone users
// and echo servers, and checks traffic and raw requests at checkpoints).
//
// Environment:
//   NAVIGATOR_URL            the server, e.g. http://127.0.0.1:41234
//   DASHBOARD_MODE           keystone | noauth
//   DASHBOARD_USER1/PASSWORD1/PROJECT1   the member who does the journey
//   DASHBOARD_USER2/PASSWORD2/PROJECT2   a member of another project
//   DASHBOARD_ADMIN_USER/_PASSWORD/_PROJECT  an admin (keystone)
//   DASHBOARD_DOMAIN         domain name (keystone; default "Default")
//   ECHO_IP, ECHO_PORT1, ECHO_PORT2      the two echo servers' address

import { run, env, step, screenshot, checkpoint, eventually, assert, focusPage, browserErrors } from './lib.mjs';

const base = env('NAVIGATOR_URL').replace(/\/$/, '');
const mode = env('DASHBOARD_MODE');
const keystone = mode === 'keystone';
const echoIp = env('ECHO_IP');
const port1 = env('ECHO_PORT1');
const port2 = env('ECHO_PORT2');

function user(n) {
    return {
        name: keystone ? env(`DASHBOARD_USER${n}`) : null,
        password: keystone ? env(`DASHBOARD_PASSWORD${n}`) : null,
        project: env(`DASHBOARD_PROJECT${n}`),
    };
}

async function login(page, who) {
    await page.goto(`${base}/dashboard`);
    await page.waitForURL(/\/dashboard\/login$/);
    if (keystone) {
        await page.getByLabel('User name').fill(who.name);
        await page.getByLabel('Password').fill(who.password);
        await page.getByLabel('Project').fill(who.project);
        await page.getByLabel('Domain').fill(env('DASHBOARD_DOMAIN', 'Default'));
    } else {
        await page.getByLabel('Project').fill(who.project);
    }
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/\/dashboard$/);
    const project = (await page.locator('[data-project]').textContent()).trim();
    assert(project === who.project, `the header shows project ${who.project} (it shows ${project})`);
}

/** The table row of the forward with `id`. */
function row(page, id) {
    return page.locator(`tr[data-forward-id="${id}"]`);
}

async function waitActive(page, id) {
    // No reload: the page's script refreshes the status cell by itself.
    await eventually(`forward ${id} to show ACTIVE`, async () => {
        const text = (await row(page, id).locator('[data-status]').textContent()).trim();
        return text === 'ACTIVE';
    });
}

async function sessionCookie(context) {
    const cookies = await context.cookies(`${base}/dashboard`);
    const c = cookies.find((c) => c.name === 'navigator_session');
    assert(c, 'a navigator_session cookie is set');
    assert(c.httpOnly, 'the session cookie is HttpOnly');
    assert(c.sameSite === 'Strict', `the session cookie is SameSite=Strict (${c.sameSite})`);
    assert(c.path === '/dashboard', `the session cookie's path is /dashboard (${c.path})`);
    if (keystone) {
        // It lasts as long as the Keystone token (the test Keystone's are 1 h), not longer.
        const left = c.expires - Date.now() / 1000;
        assert(left > 60 && left <= 3600 + 60, `the session cookie expires with the token (in ${left} s)`);
    }
    return `${c.name}=${c.value}`;
}

await run(`dashboard-${mode}`, async ({ page, context, launch }) => {
    const alice = user(1);
    const bob = user(2);

    await step('the login page is keyboard friendly', async () => {
        await page.goto(`${base}/dashboard`);
        await page.waitForURL(/\/dashboard\/login$/);
        await page.keyboard.press('Tab');
        const focused = await page.evaluate(() => document.activeElement && document.activeElement.textContent);
        assert(focused === 'Skip to main content', `the first Tab stop is the skip link (got ${focused})`);
        await page.keyboard.press('Enter');
        const target = await page.evaluate(() => document.activeElement && document.activeElement.id);
        assert(target === 'main', `the skip link moves focus to the main content (got ${target})`);
        await screenshot(page, 'login');
    });

    if (keystone) {
        await step('a wrong password is refused without a session', async () => {
            await page.getByLabel('User name').fill(alice.name);
            await page.getByLabel('Password').fill('not-the-password');
            await page.getByLabel('Project').fill(alice.project);
            await page.getByRole('button', { name: 'Log in' }).click();
            await page.locator('[data-form-error]').waitFor();
            const text = await page.locator('[data-form-error]').textContent();
            assert(/did not accept these credentials/.test(text), `login error says why: ${text}`);
            const cookies = await context.cookies(`${base}/dashboard`);
            assert(!cookies.some((c) => c.name === 'navigator_session'), 'no session after a failed login');
            assert(!page.url().includes('not-the-password'), 'the password is not in the URL');
        });
    }

    await step('log in', async () => {
        await login(page, alice);
        assert(!page.url().includes('token') && !page.url().includes('password'), 'no secret in the URL');
        const proxiesLink = await page.getByRole('link', { name: 'Proxies' }).count();
        // noauth callers are admins; a Keystone member is not.
        assert(proxiesLink === (keystone ? 0 : 1), `Proxies link shown ${proxiesLink} times`);
    });

    await step('a bad port shows the field error', async () => {
        await page.getByLabel('Internal IP address').fill(echoIp);
        await page.getByLabel('Internal port').fill('70000');
        await page.getByRole('button', { name: 'Create forward' }).click();
        const error = page.locator('#create-internal_port-error');
        await error.waitFor();
        const text = await error.textContent();
        assert(/70000/.test(text), `the internal_port error names the value: ${text}`);
        const invalid = await page.getByLabel('Internal port').getAttribute('aria-invalid');
        assert(invalid === 'true', 'the port input is marked invalid');
        const kept = await page.getByLabel('Internal IP address').inputValue();
        assert(kept === echoIp, 'the other values are kept');
        await screenshot(page, 'field-error');
    });

    let id;
    let external;
    await step('create a forward to the echo server', async () => {
        await page.getByLabel('Internal port').fill(port1);
        await page.getByLabel('Description').fill('browser journey');
        await page.getByRole('button', { name: 'Create forward' }).click();
        await page.waitForURL(/\/dashboard$/);
        await page.locator('[data-flash]').waitFor();
        const rows = page.locator('tr[data-forward-id]');
        assert((await rows.count()) === 1, 'one forward listed');
        id = await rows.first().getAttribute('data-forward-id');
        external = {
            address: await rows.first().getAttribute('data-external-address'),
            port: Number(await rows.first().getAttribute('data-external-port')),
        };
        await waitActive(page, id);
        // The status column is kept live by the page's script (allowed by the CSP).
        await page.waitForResponse((r) => r.url().endsWith('/dashboard/status.json') && r.status() === 200);
        await screenshot(page, 'forward-active');
    });

    await step('traffic passes through it', () => checkpoint('forward-active', { id, ...external }));

    await step('retarget it', async () => {
        await row(page, id).getByRole('link', { name: /Edit/ }).click();
        await page.waitForURL(/\/edit$/);
        await page.getByLabel('Internal port').fill(port2);
        await page.getByLabel('Description').fill('retargeted');
        // One traffic control, through the same form (the API tests cover the rest).
        await page.getByLabel('Max connections').fill('50');
        await screenshot(page, 'retarget');
        await page.getByRole('button', { name: 'Save' }).click();
        await page.waitForURL(/\/dashboard$/);
        const flash = await page.locator('[data-flash]').textContent();
        assert(flash.includes(`:${port2}`), `the flash names the new target: ${flash}`);
        const target = await row(page, id).locator('[data-target]').textContent();
        assert(target.endsWith(`:${port2}`), `the row shows the new target: ${target}`);
        await waitActive(page, id);
        await row(page, id).getByRole('link', { name: /Edit/ }).click();
        await page.waitForURL(/\/edit$/);
        const limit = await page.locator('[data-max-connections]').textContent();
        assert(limit === '50', `the edit page shows the new limit: ${limit}`);
        await page.getByRole('link', { name: 'Cancel' }).click();
        await page.waitForURL(/\/dashboard$/);
    });

    await step('new connections reach the new target', () => checkpoint('retargeted', { id, ...external }));

    await step('a POST without the CSRF token is refused', async () => {
        const csrf = await page.locator('form[action="/dashboard/logout"] input[name="csrf_token"]').inputValue();
        await checkpoint('csrf', { id, cookie: await sessionCookie(context), csrf });
        await page.reload();
        assert((await row(page, id).count()) === 1, 'the forward survived the forged requests');
    });

    await step('a member of another project does not see it', async () => {
        const other = await launch();
        focusPage(other.page);
        try {
            await login(other.page, bob);
            assert((await other.page.locator(`tr[data-forward-id="${id}"]`).count()) === 0, 'the forward is not listed');
            assert((await other.page.locator('[data-empty]').count()) === 1, 'the other project has no forwards');
            if (keystone) {
                // Not even by its URL (noauth callers are admins, who may).
                await other.page.goto(`${base}/dashboard/forwards/${id}/edit`);
                await other.page.waitForURL(/\/dashboard$/);
                const flash = await other.page.locator('[data-flash]').textContent();
                assert(/not found/.test(flash), `another project's forward is "not found": ${flash}`);
            }
            await screenshot(other.page, 'other-project');
        } finally {
            await other.close();
            focusPage(page);
        }
    });

    await step('the proxy overview follows the policy', async () => {
        await page.goto(`${base}/dashboard/proxies`);
        if (keystone) {
            const text = await page.locator('[data-message]').textContent();
            assert(/Only administrators/.test(text), `a member is refused the proxies: ${text}`);
        }
        // An admin (every noauth caller is one) gets the link and the table.
        let adminPage = page;
        let other = null;
        if (keystone) {
            other = await launch();
            adminPage = other.page;
            focusPage(adminPage);
            await login(adminPage, {
                name: env('DASHBOARD_ADMIN_USER'),
                password: env('DASHBOARD_ADMIN_PASSWORD'),
                project: env('DASHBOARD_ADMIN_PROJECT'),
            });
        }
        try {
            await adminPage.getByRole('link', { name: 'Proxies' }).click();
            await adminPage.waitForURL(/\/dashboard\/proxies$/);
            const first = adminPage.locator('table[data-proxies] tr[data-proxy]').first();
            await first.waitFor();
            const state = (await first.locator('[data-state]').textContent()).trim();
            assert(state === 'up', `the proxy is up: ${state}`);
            await screenshot(adminPage, 'proxies');
        } finally {
            if (other) await other.close();
            focusPage(page);
        }
        await page.goto(`${base}/dashboard`);
    });

    await step('delete it', async () => {
        await row(page, id).getByRole('button', { name: /Delete/ }).click();
        await page.waitForURL(/\/dashboard$/);
        const flash = await page.locator('[data-flash]').textContent();
        assert(/Deleted/.test(flash), `the flash confirms: ${flash}`);
        assert((await row(page, id).count()) === 0, 'the row is gone');
    });

    await step('nothing listens any more', () => checkpoint('deleted', { id, ...external }));

    await step('log out ends the session', async () => {
        const cookie = await sessionCookie(context);
        await page.getByRole('button', { name: 'Log out' }).click();
        await page.waitForURL(/\/dashboard\/login\?logged_out=1$/);
        await page.locator('[data-flash]').waitFor();
        await page.goto(`${base}/dashboard`);
        await page.waitForURL(/\/dashboard\/login$/);
        await checkpoint('logged-out', { cookie });
        await screenshot(page, 'logged-out');
    });

    if (keystone) {
        await step('the session ends when Keystone stops vouching for the token', async () => {
            await login(page, alice);
            await checkpoint('disable-user', {});
            await page.reload();
            await page.waitForURL(/\/dashboard\/login\?expired=1$/);
            const flash = await page.locator('[data-flash]').textContent();
            assert(/session has ended/.test(flash), `the login page says why: ${flash}`);
            const cookies = await context.cookies(`${base}/dashboard`);
            assert(!cookies.some((c) => c.name === 'navigator_session' && c.value), 'the session cookie is cleared');
        });
    }

    // Pages answered 4xx on purpose (field errors, refusals) are logged by
    // Chromium as failed loads; script errors are what must not happen.
    const errors = browserErrors().filter((e) => !/Failed to load resource/.test(e));
    assert(errors.length === 0, `no console or page errors: ${errors.join('; ')}`);
});
