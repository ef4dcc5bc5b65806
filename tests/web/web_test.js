// Drives the owner's web page (docs/web.md) in Debian's headless chromium.
// Run by tests/integration/api/web_test.cc inside the daemon's network
// namespace, with:
//   SG_WEB_URL      http://127.0.0.1:PORT
//   SG_WEB_TOKEN    the token from [web] token_file
//   SG_VM           a running VM the page must list
//   SG_LOOKUP_TO    an address that VM sent traffic to
//   SG_SHOT_DIR     where screenshots go
// Exits 0 when every step passed; prints what failed otherwise.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');
const fs = require('fs');
const os = require('os');

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

async function main() {
  const url = need('SG_WEB_URL');
  const token = need('SG_WEB_TOKEN');
  const vm = need('SG_VM');
  const lookupTo = need('SG_LOOKUP_TO');
  const shots = need('SG_SHOT_DIR');
  fs.mkdirSync(shots, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-chromium-'));
  // A fresh profile (--user-data-dir) for every run: no cookies survive.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.SG_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    // No session yet: the login form, and a wrong token is refused.
    await page.goto(url + '/');
    await page.fill('#login input[name=token]', 'not-the-token');
    await page.click('#login button');
    if (!(await page.content()).includes('wrong token')) throw new Error('a wrong token was not refused');
    await page.fill('#login input[name=token]', token);
    await page.click('#login button');
    await page.waitForSelector('#vms');
    const row = page.locator(`#vm-${vm}`);
    if ((await row.count()) !== 1) throw new Error(`the page does not list ${vm}`);
    const rowText = await row.innerText();
    for (const want of ['alice@example.org', 'web test VM', 'untrusted']) {
      if (!rowText.includes(want)) throw new Error(`row of ${vm} lacks '${want}': ${rowText}`);
    }
    await page.screenshot({ path: path.join(shots, 'web-overview.png'), fullPage: true });

    // The complaint lookup finds the VM that sent traffic to the address.
    await page.fill('#lookup input[name=to]', lookupTo);
    await page.fill('#lookup input[name=at]', '5m');
    await page.click('#lookup button');
    await page.waitForSelector('#lookup-result');
    const found = await page.locator('#lookup-result').innerText();
    if (!found.includes(vm) || !found.includes('alice@example.org')) {
      throw new Error(`the lookup for ${lookupTo} did not name ${vm}: ${found}`);
    }
    await page.screenshot({ path: path.join(shots, 'web-lookup.png'), fullPage: true });

    // A form without the CSRF token is refused (a plain POST from elsewhere).
    const forged = await page.request.post(url + '/stop', { form: { vm, csrf: 'forged' } });
    if (forged.status() !== 403) throw new Error(`a forged stop answered ${forged.status()}, not 403`);

    // Stop: the VM leaves the page, the message says what happened.
    await page.click(`#stop-${vm}`);
    await page.waitForSelector('#message');
    const msg = await page.locator('#message').innerText();
    if (!msg.includes(`stopped ${vm}`)) throw new Error(`after Stop the page says: ${msg}`);
    if ((await page.locator(`#vm-${vm}`).count()) !== 0) throw new Error(`${vm} is still listed after Stop`);
    const audit = await page.locator('#audit').innerText();
    if (!/stop\s+sg/.test(audit)) throw new Error(`the audit trail shows no stop: ${audit.slice(0, 400)}`);
    await page.screenshot({ path: path.join(shots, 'web-stopped.png'), fullPage: true });

    // Block a complaining prefix (a reason is required), then lift it again.
    await page.fill('#block input[name=prefix]', '192.0.2.0/24');
    await page.click('#block button');
    if (!(await page.locator('#message').innerText()).includes('reason is required')) {
      throw new Error('a block without a reason was not refused');
    }
    await page.fill('#block input[name=prefix]', '192.0.2.0/24');
    await page.fill('#block input[name=reason]', 'complaint <#12>');
    await page.click('#block button');
    await page.waitForSelector('#message');
    const blocks = await page.locator('#blocks').innerText();
    if (!blocks.includes('192.0.2.0/24') || !blocks.includes('complaint <#12>')) {
      throw new Error(`the block list lacks the new block: ${blocks}`);
    }
    await page.screenshot({ path: path.join(shots, 'web-blocked.png'), fullPage: true });
    await page.click('#blocks button');
    await page.waitForSelector('#message');
    if ((await page.locator('#blocks').innerText()).includes('192.0.2.0/24')) throw new Error('unblock did not work');
    console.log(`web test passed; screenshots in ${shots}`);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`web test FAILED: ${e.message}`);
  process.exit(1);
});
