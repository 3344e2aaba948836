// The peer of bench/fallback.sh: Socket.IO's engine.io server (npm `engine.io`, from
// tests/interop's devDependencies), long-polling only, echoing every message back the way
// its docs show (`socket.on('message', ...)` then `socket.send`).
//
// Usage: node server.mjs PORT   (prints "listening" once it accepts)
import { createRequire } from 'node:module';
import http from 'node:http';

const require = createRequire(new URL('../../tests/interop/package.json', import.meta.url));
const { Server } = require('engine.io');

const port = Number(process.argv[2] || 19300);
const httpServer = http.createServer();
const eio = new Server({ transports: ['polling'], allowUpgrades: false });
eio.attach(httpServer);
eio.on('connection', (socket) => {
  socket.on('message', (data) => socket.send(data));
});
httpServer.listen(port, '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
