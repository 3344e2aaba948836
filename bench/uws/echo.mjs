// A peer of bench/run.sh's direct cases: uWebSockets.js, the C++ uWebSockets server most Node
// users know as the fastest, echoing every message the way its examples do (`ws.send(message,
// isBinary)` from the message handler). The package is `uws-pack` from tests/interop's
// devDependencies: uWebSockets.js's release binaries repacked for npm (the official package is
// published on GitHub only).
//
// Limits as the Rust peers': no compression, messages up to 64 MiB, no idle timeout, and a
// send buffer large enough that a 64 KiB echo is never refused for backpressure.
//
// Usage: node echo.mjs --listen 127.0.0.1:PORT   (echoes on any path)
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binary = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
const uws = require(`../../tests/interop/node_modules/uws-pack/dist/bin/${binary}`);

const at = process.argv.indexOf('--listen');
const [host, port] = (at > 0 ? process.argv[at + 1] : '127.0.0.1:19100').split(':');

uws.App()
  .ws('/*', {
    compression: uws.DISABLED,
    maxPayloadLength: 64 * 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 0,
    message: (ws, message, isBinary) => {
      ws.send(message, isBinary);
    },
  })
  .listen(host, Number(port), (socket) => {
    if (!socket) {
      console.error(`uWebSockets.js: cannot listen on ${host}:${port}`);
      process.exit(1);
    }
    console.log(`echo on ws://${host}:${port}/`);
  });
process.on('SIGTERM', () => process.exit(0));
