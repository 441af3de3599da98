// A `ws` server whose V8 heap grows by a known amount per connection (issue 26's test):
//   node [--max-old-space-size=MB] ws_heap.js PORT DOUBLES
// Each connection keeps an array of DOUBLES numbers (8 bytes each, on the V8 heap) for
// as long as it is open, then is sent "ok": a client that read "ok" knows the server
// holds it. Prints "ready PORT" once listening on 127.0.0.1.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const doubles = Number(process.argv[3] || 8192);
const held = new Map();
const wss = new WebSocketServer({ host: '127.0.0.1', port }, () => {
  console.log(`ready ${wss.address().port}`);
});
let n = 0;
wss.on('connection', (ws) => {
  const keep = new Array(doubles).fill(n++ + 0.5);
  held.set(ws, keep);
  ws.on('close', () => held.delete(ws));
  ws.send('ok');
});
