// Runs a third-party server script on loopback only: every listen() that names
// no host binds 127.0.0.1. Usage: node loopback.mjs SCRIPT [ARGS...]
// (a dynamic import rather than `node --import`, which older Node lacks).
import net from 'node:net'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    if (args.length === 1 || typeof args[1] === 'function') {
      args.splice(1, 0, '127.0.0.1')
    }
  } else if (args[0] && typeof args[0] === 'object' && args[0].host === undefined && args[0].path === undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return listen.apply(this, args)
}

const script = process.argv[2]
process.argv.splice(1, 1)
await import(pathToFileURL(path.resolve(script)).href)
