#!/usr/bin/env node
// Interop peer mirroring the original network-cluster Consumer (v1.0.4, built on `ws`)
// on the wire: query string `k=encodeURIComponent(v)&...` (no `?` without params),
// ws client defaults (offers `permessage-deflate; client_max_window_bits`), swallows
// `PROVIDER_HEARTBEAT|<ms>` (stores the number), answers every text `PING` with text
// `PONG`, and closes with `ws.close()` (close frame without a code) like its destroy().
// Optional --watchdog mirrors its heartbeat check: no PING for 2 x heartbeat -> ws.close().
// No reconnect: the process exits once the socket has closed, or when stdin ends.
//
// Usage: node consumer.js --url ws://127.0.0.1:PORT/connect [--param k=v ...] [--watchdog]
// stdout: one JSON object per line (see the `out` calls); stdin: one JSON command per line.
'use strict';
const readline = require('readline');
const WebSocket = require('ws');

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// ---- arguments ----
let url = null;
let watchdog = false;
const params = {}; // an object, like the original's `parameters` option
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--url') url = argv[++i];
  else if (a === '--watchdog') watchdog = true;
  else if (a === '--param') {
    const kv = argv[++i];
    const eq = kv.indexOf('=');
    if (eq < 0) params[kv] = '';
    else params[kv.slice(0, eq)] = kv.slice(eq + 1);
  } else {
    process.stderr.write(`unknown argument: ${a}\n`);
    process.exit(2);
  }
}
if (!url) {
  process.stderr.write('usage: node consumer.js --url ws://HOST:PORT/PATH [--param k=v ...] [--watchdog]\n');
  process.exit(2);
}

// Same as the original's to_url_parameters(): keys verbatim, values encodeURIComponent'd.
const query = Object.keys(params)
  .map((k) => k + '=' + encodeURIComponent(params[k]))
  .join('&');
const ws = new WebSocket(url + (query ? '?' + query : '')); // ws defaults, like the original

// ---- state ----
let answerPings = true;
let heartbeatMs = 30000; // original default heartbeat_duration
let lastPing = Date.now();
let checkTimer = null;
let pending = []; // commands received before open
let stdinEnded = false;

function startWatchdog() {
  if (!watchdog) return;
  if (checkTimer) clearInterval(checkTimer);
  checkTimer = setInterval(() => {
    if (Date.now() - lastPing > 2 * heartbeatMs) {
      out({ event: 'watchdog' });
      ws.close();
    }
  }, heartbeatMs);
}

// ---- socket events ----
ws.on('open', () => {
  out({ event: 'open' });
  out({ event: 'extensions', value: ws.extensions });
  startWatchdog();
  const queued = pending;
  pending = null;
  queued.forEach(run);
  if (stdinEnded) closeAndExit();
});

ws.on('message', (data, isBinary) => {
  if (isBinary) return out({ event: 'binary', hex: data.toString('hex') });
  const text = data.toString();
  if (text === 'PING') {
    lastPing = Date.now();
    if (answerPings) ws.send('PONG');
    return out({ event: 'ping' });
  }
  if (text.startsWith('PROVIDER_HEARTBEAT|')) {
    heartbeatMs = +text.split('|')[1];
    startWatchdog();
    return out({ event: 'heartbeat', interval: heartbeatMs });
  }
  out({ event: 'message', message: text });
});

ws.on('error', (err) => out({ event: 'error', message: err.message }));

ws.on('close', (code, reason) => {
  out({ event: 'close', code, reason: reason.toString() });
  process.exit(0);
});

// ---- stdin commands ----
function run(cmd) {
  try {
    if (typeof cmd.send === 'string') {
      ws.send(cmd.send);
    } else if (typeof cmd.send_repeat === 'string') {
      for (let i = 0; i < (cmd.count || 0); i++) ws.send(cmd.send_repeat);
    } else if (typeof cmd.send_binary_hex === 'string') {
      ws.send(Buffer.from(cmd.send_binary_hex, 'hex'), { binary: true });
    } else if (cmd.stop_pong) {
      answerPings = false;
    } else if (cmd.close) {
      ws.close(); // no code, like the original's destroy()
    } else {
      out({ event: 'error', message: 'unknown command: ' + JSON.stringify(cmd) });
    }
  } catch (err) {
    out({ event: 'error', message: err.message });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    return out({ event: 'error', message: 'bad command: ' + err.message });
  }
  if (pending) pending.push(cmd);
  else run(cmd);
});
// stdin ended: once open (and queued commands are sent), close politely and exit.
function closeAndExit() {
  ws.close();
  setTimeout(() => process.exit(0), 1000).unref();
}
rl.on('close', () => {
  stdinEnded = true;
  if (ws.readyState === WebSocket.OPEN) closeAndExit();
});
