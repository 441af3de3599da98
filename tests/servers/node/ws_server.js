// A WebSocket server on the real `ws` package, started by tests/realservers.py:
//   node ws_server.js --port P --host 127.0.0.1 [--host ::1] [--max-open K
//        [--close-code 1013] [--close-reason TEXT]] [--protocol NAME] [--cert PEM --key PEM]
// It accepts WebSocket connections and holds them; ws answers pings by itself and this
// echoes messages. With --max-open K, a connection beyond K open ones is accepted and at
// once closed with the close code and reason, as a gateway at its own cap does.
// A plain HTTP request (no upgrade) gets 426. With --cert and --key it speaks TLS (wss://).
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

function parse(argv) {
  const opts = { hosts: [], port: 0, maxOpen: -1, closeCode: 1013, closeReason: 'too many connections', protocol: null, cert: null, key: null };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--port') opts.port = Number(value);
    else if (flag === '--host') opts.hosts.push(value);
    else if (flag === '--max-open') opts.maxOpen = Number(value);
    else if (flag === '--close-code') opts.closeCode = Number(value);
    else if (flag === '--close-reason') opts.closeReason = value;
    else if (flag === '--protocol') opts.protocol = value;
    else if (flag === '--cert') opts.cert = value;
    else if (flag === '--key') opts.key = value;
    else throw new Error(`unknown option ${flag}`);
  }
  if (!opts.port || opts.hosts.length === 0) throw new Error('--port and --host are required');
  return opts;
}

const opts = parse(process.argv.slice(2));
const handleProtocols = opts.protocol
  ? (offered) => (offered.has(opts.protocol) ? opts.protocol : false)
  : undefined;
const wss = new WebSocketServer({ noServer: true, handleProtocols });
let open = 0;

wss.on('connection', (ws) => {
  if (opts.maxOpen >= 0 && open >= opts.maxOpen) {
    ws.close(opts.closeCode, opts.closeReason);
    return;
  }
  open += 1;
  ws.on('close', () => { open -= 1; });
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

for (const host of opts.hosts) {
  const handler = (req, res) => {
    res.writeHead(426, { 'Content-Type': 'text/plain' });
    res.end('WebSocket only\n');
  };
  const server = opts.cert
    ? https.createServer({ cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) }, handler)
    : http.createServer(handler);
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  // The kernel's somaxconn caps the backlog; 511 is Node's own default, said here so it is known.
  server.listen({ port: opts.port, host: host, backlog: 511 });
}
