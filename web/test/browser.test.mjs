// The web app in a real browser (Debian's chromium, headless, driven by playwright-core)
// against a real chatd (the debug build of this tree) and the `chat` CLI: two browser users
// and a terminal user chat in a room, with typing, receipts and presence; a page reload and a
// daemon restart each resume with no gap. SCREENSHOT=FILE saves the app as it ends.

import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/chatd/target");
const CHATD = process.env.CHATD_BIN ?? join(target, "debug/chatd");
const CHAT = process.env.CHAT_BIN ?? join(target, "debug/chat");
const BROWSER = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** How long a step may take before the test fails (reconnects back off up to 10 s). */
const STEP = 30_000;

const dir = mkdtempSync(join(tmpdir(), "chatd-web-"));
let daemon;
let browser;
let quic;
let web;

function freePort(kind) {
  return new Promise((resolve, reject) => {
    if (kind === "udp") {
      const socket = createSocket("udp4");
      socket.bind(0, "127.0.0.1", () => {
        const { port } = socket.address();
        socket.close(() => resolve(port));
      });
      socket.on("error", reject);
    } else {
      const server = createServer();
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address();
        server.close(() => resolve(port));
      });
      server.on("error", reject);
    }
  });
}

/** Starts chatd on the fixed ports; resolves once the web listener is up. */
function startDaemon() {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.RUST_LOG;
    const child = spawn(CHATD, ["run", "--listen", `127.0.0.1:${quic}`, "--shards", "2", "--data-dir", join(dir, "data")], {
      env: {
        ...env,
        CHATD_LOG: "info",
        NO_COLOR: "1",
        CHATD_WEB_LISTEN: `127.0.0.1:${web}`,
        CHATD_ADMIN_LISTEN: "127.0.0.1:0",
        // The scroll-back test writes a long history at once.
        CHATD_LIMITS_SEND_RATE: "1000",
        CHATD_LIMITS_SEND_BURST: "1000",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`chatd did not start:\n${log}`)), STEP);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("chatd is listening") && log.includes("web listener up")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`chatd exited with ${code}:\n${log}`)));
  });
}

async function stopDaemon() {
  const exited = new Promise((resolve) => daemon.once("exit", resolve));
  daemon.kill("SIGTERM");
  await exited;
}

const run = promisify(execFile);

const chatArgs = () => ["--server", `127.0.0.1:${quic}`, "--ca", join(dir, "data/tls/cert.pem"), "--profile", join(dir, "carol")];

/** The `chat` CLI as carol, with her own profile. */
function chat(...args) {
  return run(CHAT, [...chatArgs(), ...args], { timeout: STEP });
}

/** `chat shell TARGET` as carol, typing `lines` (each is sent and acknowledged in turn). */
function shell(target, lines) {
  return new Promise((resolve, reject) => {
    const child = spawn(CHAT, [...chatArgs(), "shell", target], { stdio: ["pipe", "ignore", "pipe"] });
    let errors = "";
    child.stderr.on("data", (chunk) => (errors += chunk));
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`chat shell exited with ${code}: ${errors}`))));
    child.stdin.end(lines.map((l) => `${l}\n`).join(""));
  });
}

async function page(name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`${name}'s page: ${e}`));
  await page.goto(`http://127.0.0.1:${web}/`);
  await page.fill("#name", name);
  await page.fill("#password", `${name}-password`);
  await page.click("#register-button");
  await online(page);
  return page;
}

async function online(page) {
  await page.waitForSelector("#status.online", { timeout: STEP });
}

async function openConversation(page, title) {
  await page.click(`#conversations li[data-title="${title}"]`, { timeout: STEP });
}

async function say(page, text) {
  await page.fill("#composer", text);
  await page.press("#composer", "Enter");
  await sees(page, text);
}

async function sees(page, text) {
  await page.waitForSelector(`#history .message:has-text("${text}")`, { timeout: STEP });
}

/** The seqs of the entries the page shows, in order. */
async function contiguous(page) {
  const seqs = (await page.$$eval("#history [data-seq]", (els) => els.map((e) => Number(e.dataset.seq)))).sort((a, b) => a - b);
  return seqs;
}

before(async () => {
  quic = await freePort("udp");
  web = await freePort("tcp");
  daemon = await startDaemon();
  browser = await chromium.launch({ executablePath: BROWSER, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (daemon && daemon.exitCode === null) await stopDaemon();
  rmSync(dir, { recursive: true, force: true });
});

test("two browser users and a terminal user chat, and nothing is missed across a reload and a restart", async () => {
  const ann = await page("ann");
  const bob = await page("bob");
  await chat("register", "carol", "--password", "carol-password");

  // ann creates the room, bob joins it in his browser, carol in her terminal.
  await ann.fill("#new-room", "lunch");
  await ann.press("#new-room", "Enter");
  await ann.waitForSelector('#title:has-text("lunch")', { timeout: STEP });
  await bob.fill("#join-room", "lunch");
  await bob.press("#join-room", "Enter");
  await bob.waitForSelector('#title:has-text("lunch")', { timeout: STEP });
  await chat("room", "join", "lunch");

  // Browser to browser, and typing.
  await say(ann, "hello from ann");
  await sees(bob, "hello from ann");
  await bob.type("#composer", "pizza?");
  await ann.waitForSelector('#typing:has-text("bob is typing")', { timeout: STEP });
  await bob.press("#composer", "Enter");
  await sees(ann, "pizza?");

  // Read receipts: bob has the room open, so he read ann's message.
  await ann.waitForSelector('#history .seen:has-text("read by bob")', { timeout: STEP });

  // Browser to terminal: carol listens, ann writes.
  const listening = chat("listen", "room:lunch", "--from-now", "--count", "1", "--timeout", "20");
  await new Promise((r) => setTimeout(r, 1_000));
  await say(ann, "to the terminal");
  const { stdout } = await listening;
  assert.match(stdout, /to the terminal/);
  // Terminal to browsers.
  await chat("send", "room:lunch", "from the terminal");
  await sees(ann, "from the terminal");
  await sees(bob, "from the terminal");

  // Presence in a direct conversation.
  await ann.fill("#new-dm", "bob");
  await ann.press("#new-dm", "Enter");
  await ann.waitForSelector('#presence:has-text("online")', { timeout: STEP });
  await say(ann, "a direct word");
  await openConversation(bob, "ann");
  await sees(bob, "a direct word");
  await openConversation(ann, "lunch");

  // bob's page goes away; the room moves on; his page comes back and resumes with no gap.
  await openConversation(bob, "lunch");
  const url = bob.url();
  await bob.goto("about:blank");
  for (const text of ["while bob was away 1", "while bob was away 2"]) await say(ann, text);
  await chat("send", "room:lunch", "while bob was away 3");
  await bob.goto(url);
  await online(bob);
  await bob.waitForSelector('#conversations li[data-title="lunch"] .unread', { timeout: STEP });
  await openConversation(bob, "lunch");
  for (const text of ["while bob was away 1", "while bob was away 2", "while bob was away 3"]) await sees(bob, text);
  const seqs = await contiguous(bob);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `a hole in ${seqs}`);

  // The daemon restarts; both pages reconnect by themselves, and what was sent meanwhile
  // (just after the restart, before they are back) arrives.
  await stopDaemon();
  await ann.waitForSelector("#status.offline", { timeout: STEP });
  daemon = await startDaemon();
  await chat("send", "room:lunch", "after the restart");
  await online(ann);
  await online(bob);
  await sees(ann, "after the restart");
  await sees(bob, "after the restart");
  await say(bob, "bob is back");
  await sees(ann, "bob is back");
  const after = await contiguous(ann);
  for (let i = 1; i < after.length; i++) assert.equal(after[i], after[i - 1] + 1, `a hole in ${after}`);

  // Both browsers check the room's whole history against its hash chain and are shown the
  // same link for the same entry: they were given the same history.
  const verified = async (page) => {
    await page.click("#verify");
    await page.waitForSelector('#verified:has-text("entries follow the hash chain")', { timeout: STEP });
    return page.$eval("#verified", (e) => [e.textContent, e.title]);
  };
  const [annSays, annLink] = await verified(ann);
  const [bobSays, bobLink] = await verified(bob);
  assert.match(annSays, new RegExp(`^${after.length} entries follow the hash chain; #${after.at(-1)} has link`));
  assert.equal(bobSays, annSays);
  assert.equal(bobLink, annLink);
  assert.equal(annLink.length, 64);

  // And their sessions followed every entry they received on its chain, with no break.
  for (const page of [ann, bob]) {
    const report = await page.$eval("#status", (e) => e.title);
    const [, verified, broken] = report.match(/(\d+) entries verified, \d+ taken on trust, (\d+) broken/) ?? [];
    assert.ok(Number(verified) > 0, report);
    assert.equal(broken, "0", report);
  }
  assert.equal(await ann.$eval("#notice", (e) => e.textContent), "");

  if (process.env.SCREENSHOT) await ann.screenshot({ path: process.env.SCREENSHOT });
});

test("scroll-back pages a long history back to its beginning", async () => {
  const dave = await page("dave");
  await dave.fill("#new-room", "long");
  await dave.press("#new-room", "Enter");
  await dave.waitForSelector('#title:has-text("long")', { timeout: STEP });
  await chat("room", "join", "long");
  // 120 messages: more than two pages of the 50 the app loads at a time.
  await shell("room:long", Array.from({ length: 120 }, (_, i) => `line ${i + 1}`));
  await sees(dave, "line 120");
  // Opened again (a reload), the room shows its newest page only.
  await dave.reload();
  await online(dave);
  await openConversation(dave, "long");
  await sees(dave, "line 120");
  assert.equal(await dave.locator("#history .start").count(), 0, "the whole history was loaded at once");
  let shown = (await contiguous(dave)).length;
  while ((await dave.locator("#history .start").count()) === 0) {
    await dave.$eval("#history", (h) => (h.scrollTop = 0));
    await dave.waitForFunction(
      (n) => document.querySelectorAll("#history [data-seq]").length > n || document.querySelector("#history .start"),
      shown,
      { timeout: STEP },
    );
    shown = (await contiguous(dave)).length;
  }
  // The room's creation, carol's join, 120 messages: every entry, once, in order.
  const seqs = await contiguous(dave);
  assert.deepEqual(seqs, Array.from({ length: 122 }, (_, i) => i + 1));
});
