// Swagger UI in a real browser, the way an operator tries the API by hand: headless Debian
// chromium (driven by playwright-core) opens /docs/, authorizes with a bearer token through the
// Authorize dialog, runs "list resources" with "Try it out" and expects a 200 listing the
// resource that scripts/browser-test.sh created. Run it through that script.
//
// Environment:
//   BROWSER_TEST_BASE_URL      the service, e.g. http://127.0.0.1:8080 (required)
//   BROWSER_TEST_TOKEN         a bearer token that may list resources (required)
//   BROWSER_TEST_RESOURCE      the name of a resource that exists (required)
//   BROWSER_TEST_PAGE_HOST     the host name the browser opens the service by (default
//                              dro-orchestrator.test, which chromium resolves to the service's
//                              address). Swagger UI behaves differently on localhost and
//                              127.0.0.1 (no online validator badge there), so the page is
//                              opened the way an operator opens a remote service.
//   BROWSER_TEST_OUT_DIR       screenshots (default target/browser)
//   BROWSER_TEST_NODE_MODULES  where playwright-core is installed
//                              (default target/browser-test/node_modules)
//   CHROMIUM                   the browser (default /usr/bin/chromium)
//
// Besides the steps, it fails when the page requests anything outside the service's origin (the
// UI's assets are vendored: it must work offline), when a request of the page fails or an asset
// answers an error, when the page throws, or when Swagger UI shows errors (e.g. unresolvable
// $refs). Screenshots: swagger-ui-list-resources.png (and -operation.png, the operation alone) on
// success, swagger-ui-failure.png on failure.

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const STEP_TIMEOUT_MS = 30_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`swagger-ui: ${name} is required (run scripts/browser-test.sh)`);
    process.exit(2);
  }
  return value;
}

const serviceUrl = new URL(required('BROWSER_TEST_BASE_URL'));
const token = required('BROWSER_TEST_TOKEN');
const resourceName = required('BROWSER_TEST_RESOURCE');
const pageHost = process.env.BROWSER_TEST_PAGE_HOST || 'dro-orchestrator.test';
const outDir = process.env.BROWSER_TEST_OUT_DIR || path.join(ROOT, 'target/browser');
const modulesDir =
  process.env.BROWSER_TEST_NODE_MODULES || path.join(ROOT, 'target/browser-test/node_modules');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

// playwright-core lives under target/, outside this file's module resolution path.
const { chromium } = createRequire(path.join(modulesDir, 'noop.js'))('playwright-core');

const pageUrl = new URL(serviceUrl);
pageUrl.hostname = pageHost;
const origin = pageUrl.origin;

const started = Date.now();
const log = (msg) => console.log(`swagger-ui: [${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

class TestFailure extends Error {}
function check(condition, message) {
  if (!condition) throw new TestFailure(message);
}

// What the page did, whatever the steps: checked at the end, pass or fail.
const requests = []; // playwright Request objects, in order
const failedRequests = [];
const badResponses = [];
const consoleMessages = [];
const pageErrors = [];

async function pageProblems() {
  const problems = [];
  // Swagger UI reports what it could not make of the document (e.g. a dangling $ref) in a pane.
  const errorsPane = page?.locator('.swagger-ui pre.errors-wrapper .errors');
  if (errorsPane && (await errorsPane.count().catch(() => 0)) > 0) {
    const errors = await errorsPane.first().innerText({ timeout: 5000 }).catch(() => '(unreadable)');
    problems.push(`Swagger UI shows errors:\n    ${errors.trim().replace(/\s*\n\s*/g, '\n    ')}`);
  }
  // data: and blob: URLs are the page's own bytes, not network requests.
  const foreign = requests.filter((r) => !r.url().startsWith(`${origin}/`) && !/^(data|blob):/.test(r.url()));
  if (foreign.length) {
    problems.push(
      `the page requested what is not on ${origin} (the UI must work offline):\n    ` +
        foreign.map((r) => `${r.method()} ${r.url()}`).join('\n    '),
    );
  }
  if (failedRequests.length) problems.push(`requests of the page failed:\n    ${failedRequests.join('\n    ')}`);
  if (badResponses.length) problems.push(`the page's assets answered errors:\n    ${badResponses.join('\n    ')}`);
  if (pageErrors.length) problems.push(`the page threw:\n    ${pageErrors.join('\n    ')}`);
  return problems;
}

// Why Execute may send another operation: Swagger UI finds the operation to run by its
// operationId, which OpenAPI requires to be unique.
async function operationIdHint() {
  try {
    const doc = await (await page.request.get(`${serviceUrl.origin}/api-docs/openapi.json`)).json();
    const id = doc.paths?.['/api/v1/resources']?.get?.operationId;
    const sharing = Object.entries(doc.paths ?? {}).flatMap(([p, ops]) =>
      Object.entries(ops)
        .filter(([, op]) => op?.operationId === id)
        .map(([method]) => `${method.toUpperCase()} ${p}`),
    );
    return sharing.length > 1
      ? `\n  its operationId "${id}" is not unique in /api-docs/openapi.json; ${sharing.length} operations have it: ${sharing.join(', ')}`
      : '';
  } catch {
    return '';
  }
}

const args = [
  '--no-sandbox',
  '--disable-gpu',
  // The machine's network is closed: no QUIC, no background fetches, no updater, no sync.
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
if (pageHost !== serviceUrl.hostname) {
  args.push(`--host-resolver-rules=MAP ${pageHost} ${serviceUrl.hostname}`);
}

mkdirSync(outDir, { recursive: true });
let browser;
let page;
let failure = null;
try {
  log(`launching ${chromiumPath} (headless)`);
  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args });
  log(`chromium ${browser.version()}`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);

  page.on('request', (request) => requests.push(request));
  page.on('requestfailed', (request) => {
    failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  page.on('response', (response) => {
    // The API's statuses are the steps' business; anything else >= 400 is a broken page.
    if (response.status() >= 400 && !new URL(response.url()).pathname.startsWith('/api/v1/')) {
      badResponses.push(`${response.status()} ${response.request().method()} ${response.url()}`);
    }
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') {
      consoleMessages.push(`${msg.type()}: ${msg.text()}`);
    }
  });
  page.on('pageerror', (error) => pageErrors.push(String(error)));

  log(`opening ${origin}/docs/`);
  const response = await page.goto(`${origin}/docs/`, { waitUntil: 'load' });
  check(response?.ok(), `GET /docs/ answered ${response?.status()}`);
  const ui = page.locator('.swagger-ui');
  const title = ui.locator('.information-container .title');
  await title.waitFor();
  log(`Swagger UI shows "${(await title.innerText()).split('\n')[0]}"`);

  // The operation: GET /api/v1/resources, whose summary is "List resources, ...".
  const operation = ui
    .locator('.opblock.opblock-get')
    .filter({ has: page.locator('.opblock-summary-path[data-path="/api/v1/resources"]') })
    .filter({ has: page.locator('.opblock-summary-description', { hasText: /^List resources\b/ }) });
  await operation.first().waitFor();
  const operations = await operation.count();
  check(operations === 1, `found ${operations} "GET /api/v1/resources" "List resources" operations, want 1`);

  log('clicking "Authorize"');
  await ui.locator('.auth-wrapper .btn.authorize').click();
  const dialog = ui.locator('.dialog-ux .modal-ux');
  await dialog.waitFor();
  // The dialog lists every scheme; the API's is `bearer` (another is hooks' token).
  const bearer = dialog
    .locator('.auth-container')
    .filter({ has: page.locator('h4 code', { hasText: /^bearer$/ }) });
  const schemes = await bearer.count();
  check(schemes === 1, `found ${schemes} "bearer" schemes in the Authorize dialog, want 1`);
  log('filling the bearer token into the dialog');
  // Not getByLabel: both bearer schemes' inputs have the id their labels point to.
  await bearer.locator('input#auth-bearer-value').fill(token);
  await bearer.getByRole('button', { name: 'Apply credentials' }).click();
  await bearer.locator('h6', { hasText: 'Authorized' }).waitFor();
  log('the dialog shows "Authorized"; closing it');
  await bearer.getByRole('button', { name: 'Close' }).click();
  await dialog.waitFor({ state: 'detached' });
  check(
    await ui.locator('.auth-wrapper .btn.authorize.locked').isVisible(),
    'the Authorize button does not show a locked padlock after authorizing',
  );

  log('expanding "GET /api/v1/resources" (List resources)');
  await operation.locator('.opblock-summary-control').click();
  log('clicking "Try it out"');
  await operation.getByRole('button', { name: 'Try it out' }).click();
  // Try it out fills in the parameters' examples (label=env=prod): clear them to list everything.
  for (const row of await operation.locator('table.parameters tr[data-param-name]').all()) {
    const input = row.locator('input[type=text]');
    if ((await input.count()) === 1 && (await input.inputValue())) {
      log(`clearing the prefilled parameter ${await row.getAttribute('data-param-name')}=${await input.inputValue()}`);
      await input.fill('');
    }
  }
  log('clicking "Execute"');
  const sentBefore = requests.length;
  await operation.getByRole('button', { name: 'Execute' }).click();
  const live = operation.locator('.live-responses-table tbody tr.response');
  await live.waitFor();
  log(`Swagger UI shows the request URL ${(await operation.locator('.request-url pre').innerText()).trim()}`);
  const apiCalls = requests.slice(sentBefore).filter((r) => new URL(r.url()).pathname.startsWith('/api/'));
  const sent = apiCalls.find((r) => r.method() === 'GET' && new URL(r.url()).pathname === '/api/v1/resources');
  if (!sent) {
    throw new TestFailure(
      `"Execute" on GET /api/v1/resources sent ${apiCalls.map((r) => `${r.method()} ${r.url()}`).join(', ') || 'nothing'}` +
        (await operationIdHint()),
    );
  }
  log(`the browser sent GET ${sent.url()}`);
  const authorization = (await sent.allHeaders()).authorization ?? '';
  check(
    authorization === `Bearer ${token}`,
    authorization
      ? `the request carried "Authorization: ${authorization.slice(0, 16)}...", not the token entered`
      : 'the request carried no Authorization header',
  );
  log('the request carried "Authorization: Bearer <the token>"');

  const status = (await live.locator('td.response-col_status').innerText()).trim();
  const body = (await live.locator('td.response-col_description .highlight-code pre').first().innerText()).trim();
  log(`Swagger UI shows the live response code ${status}`);
  check(status === '200', `the live response code is ${status}, want 200; its body: ${body.slice(0, 500)}`);
  check(
    body.includes(`"name": "${resourceName}"`),
    `the response body does not list the resource "${resourceName}"; it shows: ${body.slice(0, 500)}`,
  );
  log(`the response body lists the resource "${resourceName}"`);

  const problems = await pageProblems();
  check(problems.length === 0, problems.join('\n  '));
  log(`all ${requests.length} requests of the page went to ${origin}`);

  const shot = path.join(outDir, 'swagger-ui-list-resources.png');
  await page.screenshot({ path: shot, fullPage: true });
  // The whole page is ~16000 px tall; the operation alone is what a reader looks for.
  const opShot = path.join(outDir, 'swagger-ui-list-resources-operation.png');
  await operation.screenshot({ path: opShot });
  log(`screenshots: ${path.relative(process.cwd(), shot)}, ${path.relative(process.cwd(), opShot)}`);
} catch (error) {
  failure = error instanceof TestFailure ? error.message : (error.stack ?? String(error));
  // Whatever else went wrong on the page, for the diagnosis.
  for (const problem of await pageProblems()) if (!failure.includes(problem)) failure += `\n  also: ${problem}`;
  if (page) {
    const shot = path.join(outDir, 'swagger-ui-failure.png');
    try {
      await page.screenshot({ path: shot, fullPage: true, timeout: STEP_TIMEOUT_MS });
      failure += `\n  failure screenshot: ${path.relative(process.cwd(), shot)}`;
    } catch (shotError) {
      failure += `\n  could not save a failure screenshot: ${shotError.message}`;
    }
  }
} finally {
  log(
    consoleMessages.length
      ? `the page's console errors and warnings:\n  ${consoleMessages.join('\n  ')}`
      : "the page's console had no errors or warnings",
  );
  await browser?.close().catch(() => {});
}
if (failure) {
  console.error(`swagger-ui: FAILED: ${failure}`);
  process.exit(1);
}
log('PASSED');
