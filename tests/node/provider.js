#!/usr/bin/env node
// Interop peer mirroring the original network-cluster Provider (v1.0.4, hyper-express /
// uWebSockets.js) on the wire, built on a `ws` WebSocketServer: upgrades only on --path;
// auth by decoded URL parameters (every --auth key present with an identical value), else
// `HTTP/1.1 403 Forbidden` / `Content-Length: 12` / `Unauthorized`; no compression unless
// --compress 1 (the original's ws.compressor); sends
// `PROVIDER_HEARTBEAT|<ms>` first; one heartbeat cycle every --heartbeat-ms over all
// connections (PROTOCOL.md 3.2: alive -> not alive + text `PING`; not alive and
// strikes < max -> strikes++; else end with an empty close frame); text `PONG` resets
// alive/strikes and is swallowed; `GET /alive` -> 200 `Hello World @ <epoch ms>`; other
// plain HTTP requests get the TCP connection closed without a response; incoming messages
// above --max-payload (default 32768, like the original) drop the connection (ws: 1009).
//
// Usage: node provider.js [--port 0] [--host 127.0.0.1] [--path /connect] [--auth k=v ...]
//          [--heartbeat-ms 30000] [--max-strikes 2] [--max-payload 32768] [--compress 0|1]
// stdout: one JSON object per line (see the `out` calls); stdin: one JSON command per line.
'use strict';
const http = require('http');
const crypto = require('crypto');
const querystring = require('querystring');
const readline = require('readline');
const { WebSocketServer } = require('ws');

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// ---- arguments ----
const opt = { port: 8080, host: '127.0.0.1', path: '/connect', heartbeatMs: 30000, maxStrikes: 2, maxPayload: 32768, compress: false };
const auth = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const v = argv[++i];
  if (v === undefined) {
    process.stderr.write(`missing value for ${a}\n`);
    process.exit(2);
  }
  if (a === '--port') opt.port = +v;
  else if (a === '--host') opt.host = v;
  else if (a === '--path') opt.path = v;
  else if (a === '--heartbeat-ms') opt.heartbeatMs = +v;
  else if (a === '--max-strikes') opt.maxStrikes = +v;
  else if (a === '--max-payload') opt.maxPayload = +v;
  else if (a === '--compress') opt.compress = v === '1';
  else if (a === '--auth') {
    const eq = v.indexOf('=');
    if (eq < 0) auth[v] = '';
    else auth[v.slice(0, eq)] = v.slice(eq + 1);
  } else {
    process.stderr.write(`unknown argument: ${a}\n`);
    process.exit(2);
  }
}

// ---- state ----
const conns = new Map(); // id -> ws (with .id, .alive, .strikes)
let echo = false;
let destroying = false;

// ---- HTTP: GET /alive, everything else dropped ----
const server = http.createServer((req, res) => {
  const pathname = req.url.split('?')[0];
  if (req.method === 'GET' && pathname === '/alive') return res.end('Hello World @ ' + Date.now());
  req.socket.destroy();
});

// ---- websocket upgrade with auth ----
// --compress 1: permessage-deflate on (uWebSockets' SHARED_COMPRESSOR), every message compressed.
const wss = new WebSocketServer({
  noServer: true,
  maxPayload: opt.maxPayload,
  perMessageDeflate: opt.compress ? { threshold: 0 } : false,
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const q = req.url.indexOf('?');
  const pathname = q < 0 ? req.url : req.url.slice(0, q);
  if (pathname !== opt.path || destroying) return socket.destroy();
  const parameters = { ...querystring.parse(q < 0 ? '' : req.url.slice(q + 1)) };
  const ok = Object.keys(auth).every((k) => parameters[k] === auth[k]);
  if (!ok) return socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nUnauthorized');
  wss.handleUpgrade(req, socket, head, (ws) => onOpen(ws, parameters));
});

function onOpen(ws, parameters) {
  const id = crypto.randomUUID();
  Object.assign(ws, { id, alive: true, strikes: 0 });
  conns.set(id, ws);
  out({ event: 'open', id, parameters, extensions: ws.extensions });
  ws.send('PROVIDER_HEARTBEAT|' + opt.heartbeatMs);

  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      out({ event: 'binary', id, hex: data.toString('hex') });
      if (echo) ws.send(data, { binary: true });
      return;
    }
    const text = data.toString();
    if (text === 'PONG') {
      ws.alive = true;
      ws.strikes = 0;
      return;
    }
    out({ event: 'message', id, message: text });
    if (echo) ws.send(text);
  });
  ws.on('error', (err) => out({ event: 'error', id, message: err.message }));
  ws.on('close', (code, reason) => {
    conns.delete(id);
    out({ event: 'close', id, code, reason: reason.toString() });
    if (destroying && conns.size === 0) process.exit(0);
  });
}

// End like the original's uWS end(): empty close frame (no code), then FIN right away
// (ws alone would wait up to 30 s for the peer's close frame before closing TCP).
function end(ws) {
  ws.close();
  if (ws._socket) ws._socket.end(); // `ws` 8.x internal; the close frame is already queued
}

// ---- heartbeat cycle (PROTOCOL.md 3.2) ----
const heartbeat = setInterval(() => {
  for (const ws of conns.values()) {
    if (ws.alive) {
      ws.alive = false;
      ws.send('PING');
    } else if (ws.strikes < opt.maxStrikes) {
      ws.strikes++;
    } else {
      end(ws);
    }
  }
}, opt.heartbeatMs);

function destroy() {
  if (destroying) return;
  destroying = true;
  clearInterval(heartbeat);
  server.close();
  for (const ws of conns.values()) end(ws);
  if (conns.size === 0) process.exit(0);
  setTimeout(() => process.exit(0), 2000).unref();
}

// ---- stdin commands ----
function run(cmd) {
  const targets = cmd.id !== undefined ? [conns.get(cmd.id)].filter(Boolean) : [...conns.values()];
  if (cmd.id !== undefined && targets.length === 0) return out({ event: 'error', message: 'unknown id: ' + cmd.id });
  if (typeof cmd.send === 'string') targets.forEach((ws) => ws.send(cmd.send));
  else if (typeof cmd.send_binary_hex === 'string')
    targets.forEach((ws) => ws.send(Buffer.from(cmd.send_binary_hex, 'hex'), { binary: true }));
  else if (cmd.destroy) destroy();
  else if ('echo' in cmd) echo = !!cmd.echo;
  else out({ event: 'error', message: 'unknown command: ' + JSON.stringify(cmd) });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  try {
    run(JSON.parse(line));
  } catch (err) {
    out({ event: 'error', message: 'bad command: ' + err.message });
  }
});
rl.on('close', destroy); // stdin ended (e.g. the test process died): shut down

server.listen(opt.port, opt.host, () => out({ event: 'listening', port: server.address().port }));
