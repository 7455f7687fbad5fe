#!/usr/bin/env node
// v2_device.js: a device written against the AWS IoT Device SDK v2 for JavaScript
// (aws-iot-device-sdk-v2: aws-crt's MQTT 3.1.1 client and iotshadow.IotShadowClient), driven
// by tests/integration/test_aws.py. It connects to the broker (plain TCP, or mutual TLS with
// --cert/--key/--ca), then reads one JSON command per line on stdin and writes one JSON event
// per line on stdout: what the SDK's callbacks received, as they received it.
//
//   node v2_device.js --host H --port P --client-id ID [--ca F --cert F --key F]
//
// Commands: {"cmd": "subscribe", "thing": T, "shadow": N|null}   -> {"ev": "subscribed"}
//           {"cmd": "update", "thing": T, "shadow": N|null, "state": {...}, "version"?, "clientToken"?}
//           {"cmd": "get" | "delete", "thing": T, "shadow": N|null, "clientToken"?}
//                                                               -> {"ev": "published", "op": ...}
//           {"cmd": "quit"}                                     -> {"ev": "closed"}, exit 0
// Events of a subscription: {"ev": "<op>_<accepted|rejected>" | "delta" | "documents",
//                            "shadow": N|null, "payload": <the SDK's parsed response>}
'use strict';

const readline = require('readline');
const { mqtt, iot, iotshadow } = require('aws-iot-device-sdk-v2');

function out(ev) {
    process.stdout.write(JSON.stringify(ev) + '\n');
}

function parseArgs(argv) {
    const a = {};
    for (let i = 0; i + 1 < argv.length; i += 2) {
        if (!argv[i].startsWith('--'))
            throw new Error(`unexpected argument ${argv[i]}`);
        a[argv[i].slice(2)] = argv[i + 1];
    }
    for (const k of ['host', 'port', 'client-id'])
        if (!a[k])
            throw new Error(`--${k} is required`);
    return a;
}

async function subscribe(shadow, thing, name) {
    const q = mqtt.QoS.AtLeastOnce;
    const report = (ev) => (error, response) =>
        out({ ev, shadow: name, payload: response, error: error ? String(error) : undefined });
    if (name === null || name === undefined) {
        const r = { thingName: thing };
        await shadow.subscribeToUpdateShadowAccepted(r, q, report('update_accepted'));
        await shadow.subscribeToUpdateShadowRejected(r, q, report('update_rejected'));
        await shadow.subscribeToGetShadowAccepted(r, q, report('get_accepted'));
        await shadow.subscribeToGetShadowRejected(r, q, report('get_rejected'));
        await shadow.subscribeToDeleteShadowAccepted(r, q, report('delete_accepted'));
        await shadow.subscribeToDeleteShadowRejected(r, q, report('delete_rejected'));
        await shadow.subscribeToShadowDeltaUpdatedEvents(r, q, report('delta'));
        await shadow.subscribeToShadowUpdatedEvents(r, q, report('documents'));
    } else {
        const r = { thingName: thing, shadowName: name };
        await shadow.subscribeToUpdateNamedShadowAccepted(r, q, report('update_accepted'));
        await shadow.subscribeToUpdateNamedShadowRejected(r, q, report('update_rejected'));
        await shadow.subscribeToGetNamedShadowAccepted(r, q, report('get_accepted'));
        await shadow.subscribeToGetNamedShadowRejected(r, q, report('get_rejected'));
        await shadow.subscribeToDeleteNamedShadowAccepted(r, q, report('delete_accepted'));
        await shadow.subscribeToDeleteNamedShadowRejected(r, q, report('delete_rejected'));
        await shadow.subscribeToNamedShadowDeltaUpdatedEvents(r, q, report('delta'));
        await shadow.subscribeToNamedShadowUpdatedEvents(r, q, report('documents'));
    }
}

async function handle(shadow, conn, c) {
    const q = mqtt.QoS.AtLeastOnce;
    const named = c.shadow !== null && c.shadow !== undefined;
    const req = { thingName: c.thing };
    if (named)
        req.shadowName = c.shadow;
    if (c.clientToken !== undefined)
        req.clientToken = c.clientToken;
    switch (c.cmd) {
    case 'subscribe':
        await subscribe(shadow, c.thing, named ? c.shadow : null);
        out({ ev: 'subscribed', shadow: named ? c.shadow : null });
        return;
    case 'update':
        req.state = c.state;
        if (c.version !== undefined)
            req.version = c.version;
        await (named ? shadow.publishUpdateNamedShadow(req, q) : shadow.publishUpdateShadow(req, q));
        break;
    case 'get':
        await (named ? shadow.publishGetNamedShadow(req, q) : shadow.publishGetShadow(req, q));
        break;
    case 'delete':
        await (named ? shadow.publishDeleteNamedShadow(req, q) : shadow.publishDeleteShadow(req, q));
        break;
    case 'quit':
        await conn.disconnect();
        out({ ev: 'closed' });
        process.exit(0);
        return;
    default:
        throw new Error(`unknown command ${c.cmd}`);
    }
    out({ ev: 'published', op: c.cmd, shadow: named ? c.shadow : null });
}

async function main() {
    const a = parseArgs(process.argv.slice(2));
    let builder;
    if (a.cert) {
        builder = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(a.cert, a.key);
        builder.with_certificate_authority_from_path(undefined, a.ca);
    } else {
        builder = iot.AwsIotMqttConnectionConfigBuilder.new_default_builder();
    }
    builder.with_endpoint(a.host)
        .with_port(Number(a.port))
        .with_client_id(a['client-id'])
        .with_clean_session(true)
        .with_keep_alive_seconds(30);
    const config = builder.build();
    if (!a.cert)
        config.tls_ctx = undefined; // plain TCP: the test broker's listener speaks no TLS
    const client = new mqtt.MqttClient();
    const conn = client.new_connection(config);
    conn.on('interrupt', (e) => out({ ev: 'interrupted', error: String(e) }));
    conn.on('error', (e) => out({ ev: 'connection_error', error: String(e) }));
    await conn.connect();
    out({ ev: 'connected', sdk: require('aws-iot-device-sdk-v2/package.json').version,
          node: process.version });
    const shadow = new iotshadow.IotShadowClient(conn);

    // Commands run one after the other, in the order they came.
    let chain = Promise.resolve();
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
        if (!line.trim())
            return;
        chain = chain.then(async () => {
            let c;
            try {
                c = JSON.parse(line);
                await handle(shadow, conn, c);
            } catch (e) {
                out({ ev: 'error', cmd: c ? c.cmd : undefined, error: String(e) });
            }
        });
    });
    rl.on('close', () => chain.then(() => conn.disconnect()).then(() => process.exit(0)));
}

main().catch((e) => {
    out({ ev: 'fatal', error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
});
