// bench/bench_services.py's WebSocket server: the real `ws` package (installed by
// tests/realservers.py into tests/servers/node/) in K cluster workers, so 100,000
// connections fit under a hard RLIMIT_NOFILE of 20,000 per process. The primary accepts
// and hands each connection to a worker in turn (Node's round-robin scheduling on Linux).
//   node ws_cluster.js --port P --host H --workers K [--cert PEM --key PEM]   (TLS: wss://)
'use strict';
const cluster = require('cluster');
// Workers accept on the shared listener themselves (SCHED_NONE): the primary handing
// every connection over IPC in turn (round-robin) caps the accept rate at one process.
cluster.schedulingPolicy = cluster.SCHED_NONE;
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', 'tests', 'servers', 'node', 'node_modules', 'ws'));

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const port = Number(args.port), host = args.host || '127.0.0.1', workers = Number(args.workers || 6);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws) => { ws.on('error', () => {}); });
  const handler = (req, res) => { res.writeHead(426); res.end(); };
  const server = args.cert
    // handshakeTimeout: Node drops a TLS handshake not done in 120 s by default; with
    // connections queued faster than two vCPUs sign, a slow one is not a dead one.
    ? https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key),
                           handshakeTimeout: 600000 }, handler)
    : http.createServer(handler);
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  server.listen({ port, host, backlog: 65535 });
}
