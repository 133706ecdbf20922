#!/usr/bin/env node
// Minimal thumbnail_server client for Node.js: upload one video, save one thumbnail.
//
//   npm ci            # @grpc/grpc-js and @grpc/proto-loader from package-lock.json
//   node thumbnail_example.js [--server HOST:PORT] [--at 10%|12.5] [--width 320] VIDEO OUT.png
//
// The .proto is loaded at run time (proto-loader): no generated code.
// Exit status: 0 saved, 1 the call failed (the gRPC status is printed), 2 usage.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const CHUNK = 1 << 20; // upload message size: any size works; 1 MiB is a good trade-off

function usage(msg) {
  if (msg) console.error(msg);
  console.error("usage: thumbnail_example.js [--server HOST:PORT] [--at 10%|SECONDS] " +
    "[--width N] [--proto FILE] VIDEO OUT.png");
  process.exit(2);
}

function parseArgs(argv) {
  const a = {
    server: process.env.THUMBNAIL_SERVER || "localhost:50051",
    at: "10%",
    width: 320,
    proto: path.join(__dirname, "..", "..", "proto", "thumbnail.proto"),
    files: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (["--server", "--at", "--width", "--proto"].includes(flag)) {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      a[flag.slice(2)] = argv[++i];
    } else if (flag.startsWith("--")) {
      usage(`unknown option ${flag}`);
    } else {
      a.files.push(flag);
    }
  }
  if (a.files.length !== 2) usage("expected VIDEO and OUT.png");
  a.width = Number(a.width);
  if (!Number.isInteger(a.width) || a.width < 0) usage("--width: a whole number >= 0");
  const n = Number(a.at.endsWith("%") ? a.at.slice(0, -1) : a.at);
  if (!Number.isFinite(n) || n < 0) usage("--at: seconds (12.5) or percent (10%)");
  a.point = a.at.endsWith("%") ? { percent: n } : { seconds: n };
  return a;
}

// Send Options, the file in CHUNK-sized data messages (respecting backpressure), End.
async function upload(call, video, args) {
  call.write({
    options: {
      file_name: path.basename(video),
      size: fs.statSync(video).size,
      times: [args.point],
      max_width: args.width,
      format: "IMAGE_FORMAT_PNG",
    },
  });
  for await (const data of fs.createReadStream(video, { highWaterMark: CHUNK })) {
    if (!call.write({ data })) await new Promise((resolve) => call.once("drain", resolve));
  }
  call.write({ end: {} });
  call.end();
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const [video, out] = args.files;
  const def = protoLoader.loadSync(args.proto, {
    keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def).thumbnail.v1;
  const client = new pkg.Thumbnailer(args.server, grpc.credentials.createInsecure(), {
    // Responses carry at most the server's --chunk-size (1 MiB) each; allow more.
    "grpc.max_receive_message_length": 64 << 20,
  });

  const call = client.Generate({ deadline: Date.now() + 300 * 1000 });
  let header = null;
  const parts = [];
  call.on("data", (r) => {
    if (r.msg === "thumbnail") header = r.thumbnail;
    else parts.push(r.data);
  });
  call.on("error", (e) => {
    console.error(`${video}: ${grpc.status[e.code]}: ${e.details}`);
    process.exitCode = 1;
    client.close();
  });
  call.on("end", () => {
    client.close();
    const image = Buffer.concat(parts);
    if (process.exitCode) return; // "error" came first
    if (!header || image.length !== header.size) {
      console.error(`${video}: incomplete reply`);
      process.exitCode = 1;
      return;
    }
    fs.writeFileSync(out + ".part", image);
    fs.renameSync(out + ".part", out);
    console.log(`${video}: ${header.width}x${header.height} at ` +
      `${header.actual_time.toFixed(3)} s -> ${out} (${image.length} bytes)`);
  });
  upload(call, video, args).catch((e) => {
    console.error(`${video}: ${e.message}`);
    call.cancel();
    process.exitCode = 1;
  });
}

main();
