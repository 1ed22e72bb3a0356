// Shared harness for Navigator's browser tests (the built-in /dashboard page
// and the Horizon plugin).
//
// It drives Debian's Chromium (/usr/bin/chromium) through playwright-core and
// never downloads a browser. A test script is a plain ES module run by node
// from a Rust test (tests/e2e), which passes its inputs as environment
// variables and checks what the browser cannot (traffic through a forward)
// at checkpoints:
//
//   import { run, env, step, screenshot, checkpoint } from './lib.mjs';
//   await run('dashboard-keystone', async ({ page }) => {
//     await step('open the login page', () => page.goto(env('NAVIGATOR_URL')));
//     await screenshot(page, 'login');
//     const reply = await checkpoint('forward-active', { port: 20000 });
//   });
//
// Everything that goes wrong ends the process with exit code 1 and a message
// naming the step, the page's URL, and the page's console errors, after a
// `failure-...` screenshot was written to the artifacts directory.

import { mkdtempSync, mkdirSync, rmSync, accessSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

let chromium;
try {
    ({ chromium } = await import('playwright-core'));
} catch (err) {
    fail(
        'playwright-core is not installed: run `npm ci` in tests/browser ' +
            `(or set NODE_PATH to a node_modules that holds it): ${err.message}`,
    );
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** Where screenshots go: $NAVIGATOR_ARTIFACTS_DIR, else target/artifacts/screenshots of the repo. */
export const artifactsDir = path.resolve(
    process.env.NAVIGATOR_ARTIFACTS_DIR || path.join(here, '..', '..', 'target', 'artifacts', 'screenshots'),
);

/** The browser binary: $NAVIGATOR_CHROMIUM, else Debian's. */
export const chromiumPath = process.env.NAVIGATOR_CHROMIUM || '/usr/bin/chromium';

/**
 * Flags for a root user on a closed network: no sandbox (root), no GPU, and
 * nothing that phones home (QUIC, component updates, sync, background
 * fetches) so that the browser talks only to the servers under test.
 */
export const chromiumArgs = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
];

/** Default time for one Playwright action or wait; the CI machine is small and busy. */
export const defaultTimeoutMs = Number(process.env.NAVIGATOR_BROWSER_TIMEOUT_MS || 30000);

let runName = 'browser';
let currentStep = '(start-up)';
let currentPage = null;
const pageErrors = [];
let shotCounter = 0;

/** Prints a failure and exits 1. */
function fail(message) {
    process.stderr.write(`browser test failed: ${message}\n`);
    process.exit(1);
}

/** Returns a required environment variable, or fails naming it. */
export function env(name, fallback) {
    const value = process.env[name];
    if (value === undefined || value === '') {
        if (fallback !== undefined) return fallback;
        fail(`environment variable ${name} is not set (the Rust test that runs this script sets it)`);
    }
    return value;
}

/** Throws with `message` unless `condition` holds. */
export function assert(condition, message) {
    if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** Turns a free-form name into a safe file name part. */
function slug(name) {
    return String(name)
        .toLowerCase()
        .replace(/[^a-z0-9._-]+/g, '-')
        .replace(/^-+|-+$/g, '')
        .slice(0, 80) || 'page';
}

/**
 * Saves a full-page PNG of `page` as `<prefix>-NN-<name>.png` in the artifacts
 * directory and returns its path. `prefix` is the name given to run().
 */
export async function screenshot(page, name) {
    mkdirSync(artifactsDir, { recursive: true });
    shotCounter += 1;
    const file = path.join(artifactsDir, `${runName}-${String(shotCounter).padStart(2, '0')}-${slug(name)}.png`);
    await page.screenshot({ path: file, fullPage: true });
    log(`screenshot ${file}`);
    return file;
}

/** Logs one line to stderr (stdout carries checkpoints). */
export function log(message) {
    process.stderr.write(`[browser ${runName}] ${message}\n`);
}

/**
 * Runs `fn` as a named step: the name is logged, and a failure inside it is
 * reported with that name.
 */
export async function step(name, fn) {
    currentStep = name;
    log(`step: ${name}`);
    return await fn();
}

// Checkpoints: the script prints `NAVIGATOR-CHECKPOINT {"name":...,"data":...}`
// on stdout and waits for one line on stdin from the driver: `ok`, `ok {json}`
// (the reply's data), or `fail <reason>`.
let stdinLines = null;
function nextStdinLine() {
    if (!stdinLines) {
        const rl = createInterface({ input: process.stdin });
        const queue = [];
        const waiters = [];
        rl.on('line', (line) => {
            const w = waiters.shift();
            if (w) w.resolve(line);
            else queue.push(line);
        });
        rl.on('close', () => {
            for (const w of waiters.splice(0)) w.reject(new Error('the driver closed stdin during a checkpoint'));
            queue.closed = true;
        });
        stdinLines = { queue, waiters };
    }
    const { queue, waiters } = stdinLines;
    if (queue.length) return Promise.resolve(queue.shift());
    if (queue.closed) return Promise.reject(new Error('the driver closed stdin during a checkpoint'));
    return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
}

/**
 * Tells the driver that `name` was reached (with JSON `data`) and waits for its
 * verdict. Resolves to the driver's reply data (or null); throws if the
 * driver answered `fail ...`.
 */
export async function checkpoint(name, data = {}) {
    currentStep = `checkpoint ${name}`;
    log(`checkpoint: ${name}`);
    process.stdout.write(`NAVIGATOR-CHECKPOINT ${JSON.stringify({ name, data })}\n`);
    const line = (await nextStdinLine()).trim();
    if (line === 'ok') return null;
    if (line.startsWith('ok ')) return JSON.parse(line.slice(3));
    if (line.startsWith('fail')) throw new Error(`driver rejected checkpoint ${name}: ${line.slice(4).trim()}`);
    throw new Error(`driver answered checkpoint ${name} with an unknown line: ${JSON.stringify(line)}`);
}

/**
 * Polls `probe` (an async function returning a truthy value when done) until
 * it succeeds or `timeoutMs` passes; `what` names the awaited condition in the
 * error. Use it for state that changes on the server, e.g. a status cell
 * turning ACTIVE after a page refresh.
 */
export async function eventually(what, probe, { timeoutMs = defaultTimeoutMs, intervalMs = 250 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            const value = await probe();
            if (value) return value;
        } catch (err) {
            last = err;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

/** Checks that the browser binary exists and is executable, with a message saying how to get it. */
function checkChromium() {
    try {
        accessSync(chromiumPath, constants.X_OK);
    } catch {
        fail(
            `no Chromium at ${chromiumPath}: install Debian's \`chromium\` package ` +
                '(scripts/test-all does) or set NAVIGATOR_CHROMIUM; this harness never downloads a browser',
        );
    }
}

/**
 * Opens a fresh browser context (a new user data dir, so no cookies or cache
 * carry over) and returns { context, page, newPage, close }. run() calls it
 * once; tests needing a second, independent user call it again.
 */
export async function launch({ viewport = { width: 1280, height: 800 } } = {}) {
    checkChromium();
    const userDataDir = mkdtempSync(path.join(tmpdir(), 'navigator-chromium-'));
    let context;
    try {
        context = await chromium.launchPersistentContext(userDataDir, {
            executablePath: chromiumPath,
            headless: true,
            chromiumSandbox: false,
            args: chromiumArgs,
            viewport,
            acceptDownloads: false,
            timeout: 60000,
        });
    } catch (err) {
        rmSync(userDataDir, { recursive: true, force: true });
        throw new Error(`could not start ${chromiumPath}: ${err.message}`);
    }
    context.setDefaultTimeout(defaultTimeoutMs);
    context.setDefaultNavigationTimeout(defaultTimeoutMs);
    const watch = (page) => {
        page.on('pageerror', (err) => pageErrors.push(`page error on ${page.url()}: ${err.message}`));
        page.on('console', (msg) => {
            if (msg.type() === 'error') pageErrors.push(`console error on ${page.url()}: ${msg.text()}`);
        });
    };
    context.pages().forEach(watch);
    context.on('page', watch);
    const page = context.pages()[0] || (await context.newPage());
    return {
        context,
        page,
        newPage: () => context.newPage(),
        close: async () => {
            await context.close().catch(() => {});
            rmSync(userDataDir, { recursive: true, force: true });
        },
    };
}

/** Console and page errors seen so far (tests may assert there are none). */
export function browserErrors() {
    return [...pageErrors];
}


/**
 * The entry point of a test script: launches the browser, runs `fn({ page,
 * context, launch })`, and on failure saves a `failure-<step>` screenshot and
 * exits 1 with the step, URL and browser errors. Exits 0 on success.
 */
export async function run(name, fn) {
    runName = slug(name);
    let browser;
    const timeoutMs = Number(process.env.NAVIGATOR_BROWSER_TEST_TIMEOUT_MS || 300000);
    const timer = setTimeout(() => {
        process.stderr.write(`browser test failed: ${name} did not finish within ${timeoutMs} ms (step: ${currentStep})\n`);
        process.exit(1);
    }, timeoutMs);
    try {
        browser = await launch();
        currentPage = browser.page;
        await fn({ page: browser.page, context: browser.context, launch });
        log('passed');
    } catch (err) {
        let shot = '';
        if (currentPage && !currentPage.isClosed()) {
            try {
                shot = await screenshot(currentPage, `failure-${currentStep}`);
            } catch (e) {
                shot = `(no screenshot: ${e.message})`;
            }
        }
        const lines = [
            `${name}: step "${currentStep}" failed: ${err && err.stack ? err.stack : err}`,
            `  page: ${currentPage && !currentPage.isClosed() ? currentPage.url() : '(none)'}`,
            shot && `  screenshot: ${shot}`,
            ...pageErrors.map((e) => `  ${e}`),
        ].filter(Boolean);
        process.stderr.write(`browser test failed: ${lines.join('\n')}\n`);
        clearTimeout(timer);
        if (browser) await browser.close();
        process.exit(1);
    }
    clearTimeout(timer);
    await browser.close();
    process.exit(0);
}

/** Makes `page` the one a failure screenshot is taken of (for tests with several pages). */
export function focusPage(page) {
    currentPage = page;
}
