#!/usr/bin/env node
// v1_device.js: a device written against the AWS IoT Device SDK for JavaScript v1
// (aws-iot-device-sdk: its thingShadow client, over mutual TLS), driven by
// tests/integration/test_aws.py. It connects, registers one thing (persistent subscriptions,
// versioning on: the SDK itself sends the last version it saw with each update), then reads
// one JSON command per line on stdin and writes one JSON event per line on stdout: what the
// thingShadow's events delivered, as they delivered it.
//
//   node v1_device.js --host H --port P --client-id ID --thing T --ca F --cert F --key F
//
// Commands: {"cmd": "update", "state": {...}} | {"cmd": "get"} | {"cmd": "delete"}
//                      -> {"ev": "token", "op": ..., "token": <clientToken the SDK chose>}
//           {"cmd": "quit"} -> {"ev": "closed"}, exit 0
// Events: {"ev": "registered"}, {"ev": "status", "stat": accepted|rejected, "token", "state"},
//         {"ev": "delta", "state"}, {"ev": "foreign", "op", "state"}, {"ev": "timeout", "token"}
'use strict';

const readline = require('readline');
const awsIot = require('aws-iot-device-sdk');

function out(ev) {
    process.stdout.write(JSON.stringify(ev) + '\n');
}

function parseArgs(argv) {
    const a = {};
    for (let i = 0; i + 1 < argv.length; i += 2)
        a[argv[i].replace(/^--/, '')] = argv[i + 1];
    for (const k of ['host', 'port', 'client-id', 'thing', 'ca', 'cert', 'key'])
        if (!a[k])
            throw new Error(`--${k} is required`);
    return a;
}

function main() {
    const a = parseArgs(process.argv.slice(2));
    const thing = a.thing;
    const shadows = awsIot.thingShadow({
        host: a.host,
        port: Number(a.port),
        protocol: 'mqtts',
        clientId: a['client-id'],
        caPath: a.ca,
        certPath: a.cert,
        keyPath: a.key,
        keepalive: 30,
        enableMetrics: false,
        debug: false,
    }, { operationTimeout: 10000 });

    let registered = false;
    shadows.on('connect', () => {
        out({ ev: 'connected', sdk: require('aws-iot-device-sdk/package.json').version,
              node: process.version });
        if (registered)
            return;
        registered = true;
        shadows.register(thing, { persistentSubscribe: true, enableVersioning: true }, (err, failed) => {
            out({ ev: 'registered', error: err ? String(err) : undefined, failed });
        });
    });
    shadows.on('status', (name, stat, token, state) => out({ ev: 'status', thing: name, stat, token, state }));
    shadows.on('delta', (name, state) => out({ ev: 'delta', thing: name, state }));
    shadows.on('foreignStateChange', (name, op, state) => out({ ev: 'foreign', thing: name, op, state }));
    shadows.on('timeout', (name, token) => out({ ev: 'timeout', thing: name, token }));
    shadows.on('error', (e) => out({ ev: 'error', error: String(e) }));
    shadows.on('close', () => out({ ev: 'close' }));

    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
        if (!line.trim())
            return;
        let c;
        try {
            c = JSON.parse(line);
            let token;
            switch (c.cmd) {
            case 'update':
                token = shadows.update(thing, { state: c.state });
                break;
            case 'get':
                token = shadows.get(thing);
                break;
            case 'delete':
                token = shadows.delete(thing);
                break;
            case 'quit':
                shadows.end(false, () => {
                    out({ ev: 'closed' });
                    process.exit(0);
                });
                return;
            default:
                throw new Error(`unknown command ${c.cmd}`);
            }
            // null: the SDK refused (an operation of this thing is still pending)
            out({ ev: 'token', op: c.cmd, token });
        } catch (e) {
            out({ ev: 'error', cmd: c ? c.cmd : undefined, error: String(e) });
        }
    });
    rl.on('close', () => shadows.end(false, () => process.exit(0)));
}

try {
    main();
} catch (e) {
    out({ ev: 'fatal', error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
}
