// A VDA 5050 2.0 vehicle that nobody here wrote: the AgvController of the npm package vda-5050-lib with its
// VirtualAgvAdapter, connected to our broker with the vehicle's own credentials (tests/vda5050/test_interop.py).
//
// Configuration (environment): VDA_BROKER_URL, VDA_VEHICLE_ID (our vehicle id: its MQTT client id and username),
// VDA_SECRET (its device secret), VDA_MANUFACTURER, VDA_SERIAL_NUMBER, VDA_MAP_ID, VDA_TIME_LAPSE, VDA_LOG_FILE.
// Every MQTT PUBLISH in either direction is appended to VDA_LOG_FILE as one JSON line
// {"t": ms, "dir": "out"|"in", "topic", "qos", "retain", "payload"}; "ready" is printed on stdout once it is
// connected and subscribed. SIGTERM stops it cleanly (it then says OFFLINE, as the standard asks).
"use strict";

const fs = require("fs");
const mqtt = require("mqtt");
const { AgvController, VirtualAgvAdapter } = require("vda-5050-lib");

const env = (name) => {
    const value = process.env[name];
    if (value === undefined || value === "") {
        throw new Error(`${name} is not set`);
    }
    return value;
};
const logFile = env("VDA_LOG_FILE");

function log(dir, packet) {
    const line = { t: Date.now(), dir, topic: packet.topic, qos: packet.qos, retain: packet.retain };
    const text = Buffer.isBuffer(packet.payload) ? packet.payload.toString("utf8") : String(packet.payload);
    try {
        line.payload = JSON.parse(text);
    } catch (e) {
        line.payload = text;
    }
    fs.appendFileSync(logFile, JSON.stringify(line) + "\n");
}

// The library opens its connection with mqtt.connect; wrapping it is the one way to see every packet, the
// connection message and the subscriptions of start() included. The library itself is not changed.
const connect = mqtt.connect;
mqtt.connect = function (...args) {
    const client = connect.apply(this, args);
    client.on("packetsend", (packet) => packet.cmd === "publish" && log("out", packet));
    client.on("packetreceive", (packet) => packet.cmd === "publish" && log("in", packet));
    return client;
};

const FACTSHEET = {
    typeSpecification: {
        seriesName: "virtual", agvKinematic: "OMNI", agvClass: "CARRIER", maxLoadMass: 50,
        localizationTypes: ["NATURAL"], navigationTypes: ["AUTONOMOUS"],
    },
    physicalParameters: {
        speedMin: 0, speedMax: 2, accelerationMax: 1, decelerationMax: 1, heightMax: 1, width: 0.8, length: 1.2,
    },
    protocolLimits: { maxStringLens: {}, maxArrayLens: {}, timing: { minOrderInterval: 0.5, minStateInterval: 0.1 } },
    protocolFeatures: {
        optionalParameters: [],
        agvActions: ["noop", "pick", "drop", "initPosition", "startPause", "stopPause", "startCharging",
                     "stopCharging", "cancelOrder", "stateRequest", "factsheetRequest"]
            .map((actionType) => ({ actionType, actionScopes: ["INSTANT"] })),
    },
    agvGeometry: {},
    loadSpecification: { loadSets: [{ setName: "EPAL", loadType: "EPAL", maxWeight: 50 }] },
};

// The virtual adapter reports an empty factsheet when it attaches; a vehicle's integrator fills in its own. This
// one answers a factsheetRequest (the backend asks whenever it connects) with the adapter's actions and 2 m/s.
class VirtualAgvWithFactsheet extends VirtualAgvAdapter {
    attach(context) {
        super.attach(context);
        this.controller.updateFactsheet(FACTSHEET);
    }
}

async function main() {
    const controller = new AgvController(
        { manufacturer: env("VDA_MANUFACTURER"), serialNumber: env("VDA_SERIAL_NUMBER") },
        {
            interfaceName: "uagv",   // topics uagv/v2/{manufacturer}/{serialNumber}/{topic}
            vdaVersion: "2.0.0",
            transport: {
                brokerUrl: env("VDA_BROKER_URL"),
                username: env("VDA_VEHICLE_ID"),
                password: env("VDA_SECRET"),
                heartbeat: 10,
                reconnectPeriod: 500,
            },
        },
        { agvAdapterType: VirtualAgvWithFactsheet, publishVisualizationInterval: 0 },
        {
            initialPosition: { mapId: env("VDA_MAP_ID"), x: 0, y: 0, theta: 0, lastNodeId: "origin" },
            vehicleSpeed: 2,
            timeLapse: Number(env("VDA_TIME_LAPSE")),
        },
    );
    // Our broker knows a vehicle by its id as client id (and username); the library picks a random client id in
    // its constructor and uses it when start() connects.
    controller.clientId = env("VDA_VEHICLE_ID");
    await controller.start();
    process.stdout.write("ready\n");

    const stop = async () => {
        await controller.stop();
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((error) => {
    process.stderr.write(`virtual AGV failed: ${error && error.stack || error}\n`);
    process.exit(1);
});
