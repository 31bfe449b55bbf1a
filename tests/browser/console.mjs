// The console in a real browser: headless Chromium (the system's, never a
// downloaded one) driven through playwright-core. Started by the Rust test
// `console::browser_walkthrough` (tests/it/console.rs), which runs the
// simulator, the daemon and a receiver that was down and has recovered, and
// passes:
//   TASKHOOK_URL        the daemon's API address (the console is at /ui)
//   TASKHOOK_TOKEN      its api.token (typed into the login form, never in a URL)
//   TASK_ID             a task whose delivery is a dead letter
//   CHROMIUM            the browser binary (default /usr/bin/chromium)
//   SCREENSHOT_DIR      where to write console-*.png (only when set)
// Every wait is on a selector or a condition, with a deadline.
import { chromium } from 'playwright-core';

const base = process.env.TASKHOOK_URL;
const token = process.env.TASKHOOK_TOKEN;
const taskId = process.env.TASK_ID;
const shots = process.env.SCREENSHOT_DIR || '';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!base || !token || !taskId) {
  console.error('TASKHOOK_URL, TASKHOOK_TOKEN and TASK_ID are required');
  process.exit(2);
}
// Generous: the machine may be loaded, and nothing here waits longer than
// its condition takes.
const WAIT = 30_000;

const step = (what) => console.log(`step: ${what}`);
const fail = (what) => {
  throw new Error(what);
};

async function stats() {
  const r = await fetch(`${base}/v1/stats`, { headers: { authorization: `Bearer ${token}` } });
  if (!r.ok) fail(`/v1/stats answered ${r.status}`);
  return r.json();
}

/** Waits until `f` (in node) returns a truthy value; fails after WAIT. */
async function until(what, f) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage'],
});
const seen = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const errors = [];
  // Answers >= 400 that a step expects (the refused login).
  const expected = new Set([`${base}/ui/login`]);
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => {
    // Failed loads are judged by their answers below (a refused login is expected).
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
  });
  page.on('request', (r) => seen.push(r.url()));
  page.on('response', (r) => {
    if (r.status() >= 400 && !expected.has(r.url())) errors.push(`${r.status()} from ${r.url()}`);
  });

  step('the console asks for the token');
  await page.goto(`${base}/ui`);
  await page.waitForURL(/\/ui\/login\?next=%2Fui$/);
  if ((await page.title()) !== 'Log in · taskhook') fail(`login title: ${await page.title()}`);
  await page.fill('#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('#login-error');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(`${base}/ui`), page.press('#token', 'Enter')]);

  step('the overview shows /v1/stats and goes live');
  await page.waitForSelector('[data-stat="watching"]');
  await page.waitForFunction(() => document.getElementById('live-status').textContent === 'live');
  const st = await stats();
  const want = {
    watching: st.tasks.watching,
    delivering: st.tasks.delivering,
    done: st.tasks.done,
    dead_letters: st.dead_letters,
  };
  for (const [k, v] of Object.entries(want)) {
    const shown = await page.textContent(`[data-stat="${k}"]`);
    if (shown !== String(v)) fail(`overview ${k}: shows ${shown}, /v1/stats says ${v}`);
  }
  if (shots) await page.screenshot({ path: `${shots}/console-overview.png`, fullPage: true });

  step('keyboard: the first Tab reaches the skip link, which moves focus to the content');
  await page.keyboard.press('Tab');
  const first = await page.evaluate(() => document.activeElement.textContent);
  if (first !== 'Skip to content') fail(`first focus: ${first}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.activeElement.id === 'main');

  step('find the task and open it');
  await page.click('nav a:text-is("Tasks")');
  await page.waitForURL(/\/ui\/tasks$/);
  await page.fill('#q', taskId.slice(0, -1));
  await Promise.all([page.waitForURL(/\/ui\/tasks\?q=/), page.click('form.filters button[type=submit]')]);
  await page.click(`a.id:text-is("${taskId}")`);
  await page.waitForSelector('#attempts tbody tr');
  const attempts = await page.$$eval('#attempts tbody tr', (rows) => rows.length);
  if (attempts < 2) fail(`the task shows ${attempts} attempts`);
  const codes = await page.$$eval('#attempts tbody tr td:nth-child(5)', (tds) => tds.map((t) => t.textContent));
  if (!codes.includes('503')) fail(`attempt statuses: ${codes}`);
  await page.click('#upstream-record summary');
  await page.waitForSelector('#upstream-record pre', { state: 'visible' });
  if (shots) await page.screenshot({ path: `${shots}/console-task.png`, fullPage: true });

  step('replay its dead letter and watch it turn delivered without a reload');
  const row = page.locator('#deliveries tbody tr').first();
  if ((await row.locator('[data-field="state"]').textContent()) !== 'failed') fail('the delivery is not failed');
  await Promise.all([page.waitForURL(/replayed=1/), row.locator('button:text-is("Replay")').click()]);
  await page.waitForSelector('#notice');
  const loadedAt = await page.evaluate(() => performance.timeOrigin);
  await page.waitForFunction(
    () => document.querySelector('#deliveries tbody tr [data-field="state"]').textContent === 'delivered',
  );
  if ((await page.evaluate(() => performance.timeOrigin)) !== loadedAt) fail('the page reloaded');
  if (await row.locator('.replay-form').isVisible()) fail('a delivered delivery still offers a replay');

  step('dead letters: filter, confirm the count, replay them all');
  await page.click('nav a:text-is("Dead letters")');
  await page.waitForURL(/\/ui\/dead-letters$/);
  await page.selectOption('#event_type', 'task.succeeded');
  await Promise.all([page.waitForURL(/event_type=task.succeeded/), page.click('form.filters button[type=submit]')]);
  const listed = await page.$$eval('#dead-letters tbody tr', (rows) => rows.length);
  if (shots) await page.screenshot({ path: `${shots}/console-dead-letters.png`, fullPage: true });
  const before = (await stats()).dead_letters;
  if (listed < 1 || listed >= before) fail(`the filter shows ${listed} of ${before} dead letters`);
  await Promise.all([page.waitForURL(/\/ui\/dead-letters\/replay\?/), page.click('#replay-all')]);
  const count = await page.getAttribute('#replay-count', 'data-count');
  if (count !== String(listed)) fail(`the confirmation counts ${count}, the list showed ${listed}`);
  const label = await page.textContent('#confirm-replay');
  if (!label.includes(`Replay ${listed} `)) fail(`the button says ${label}`);
  await Promise.all([page.waitForURL(/replayed=/), page.click('#confirm-replay')]);
  const notice = await page.textContent('#notice');
  if (!notice.startsWith(`${listed} `)) fail(`the notice says ${notice}`);
  await until('the filtered dead letters delivered', async () => {
    const s = await stats();
    return s.dead_letters === before - listed && s.deliveries.pending === 0;
  });

  step('the overview follows by itself');
  await page.click('nav a:text-is("Overview")');
  await page.waitForFunction(() => document.getElementById('live-status').textContent === 'live');
  const enqueue = await fetch(`${base}/v1/tasks`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'browser-live-1' }),
  });
  if (enqueue.status !== 202) fail(`enqueue answered ${enqueue.status}`);
  await page.waitForFunction(
    (n) => document.querySelector('[data-stat="watching"]').textContent === String(n),
    (await stats()).tasks.watching,
  );

  step('a narrow screen: the page does not scroll sideways, tables do');
  await page.setViewportSize({ width: 360, height: 740 });
  for (const path of ['/ui', '/ui/tasks', `/ui/dead-letters`]) {
    await page.goto(`${base}${path}`);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (wide > 0) fail(`${path} is ${wide}px wider than a narrow screen`);
  }

  step('log out');
  await Promise.all([page.waitForURL(/\/ui\/login$/), page.click('form.logout button')]);
  await page.goto(`${base}/ui`);
  await page.waitForURL(/\/ui\/login/);

  if (errors.length) fail(`the page reported errors: ${errors.join('; ')}`);
  for (const url of seen) {
    if (url.includes(token)) fail(`the token appeared in a URL: ${url}`);
    if (!url.startsWith(base)) fail(`the console loaded something from elsewhere: ${url}`);
  }
  console.log('browser walkthrough: all steps passed');
} finally {
  await browser.close();
}
