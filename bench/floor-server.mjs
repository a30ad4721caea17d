// The RPC floor: a bare @grpc/grpc-js server on a unix socket, loading the
// same csi.proto with the same loader options as sinter, answering each
// message with a constant reply of the same shape sinter sends. No logging,
// no validation, no I/O: what any grpc-js CSI plugin pays at the least.
//   node bench/floor-server.mjs unix:///path.sock
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import * as protoLoader from '@grpc/proto-loader';
import { CSI_PROTO_PATH, LOADER_OPTIONS } from '../dist/csi/proto.js';

const address = process.argv[2];
// Parses csi.proto itself, as any grpc-js plugin does (sinter's loadCsi reads
// its precompiled proto/csi.json instead; the floor stays the plain way).
const csi = grpc.loadPackageDefinition(protoLoader.loadSync(CSI_PROTO_PATH, LOADER_OPTIONS)).csi.v1;

const NODE_CAPABILITIES = ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'EXPAND_VOLUME', 'VOLUME_CONDITION'].map((type) => ({ rpc: { type } }));

// A ListVolumes page of 100 shaped like sinter's: id, 1 GiB, volume_context,
// topology, status with a volume condition.
const page = {
  entries: Array.from({ length: 100 }, () => ({
    volume: {
      volume_id: `default-${randomUUID()}`,
      capacity_bytes: 1024 ** 3,
      volume_context: { backend: 'default' },
      accessible_topology: [{ segments: { 'topology.sinter.csi.io/node': 'bench-node' } }],
    },
    status: { published_node_ids: [], volume_condition: { abnormal: false, message: 'available: volume is healthy' } },
  })),
  next_token: `default-${randomUUID()}`,
};

const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
server.addService(csi.Identity.service, {
  GetPluginInfo: (_c, cb) => cb(null, { name: 'floor', vendor_version: '0', manifest: {} }),
  GetPluginCapabilities: (_c, cb) => cb(null, { capabilities: [] }),
  Probe: (_c, cb) => cb(null, { ready: { value: true } }),
});
server.addService(csi.Node.service, {
  NodeGetCapabilities: (_c, cb) => cb(null, { capabilities: NODE_CAPABILITIES }),
  // The attach RPCs answer empty, as sinter's do: the attach bench times the transport of its own requests.
  NodeStageVolume: (_c, cb) => cb(null, {}),
  NodePublishVolume: (_c, cb) => cb(null, {}),
  NodeUnpublishVolume: (_c, cb) => cb(null, {}),
  NodeUnstageVolume: (_c, cb) => cb(null, {}),
});
// A CreateVolume answer shaped like sinter's (id, 1 GiB, volume_context, topology): the provisioning bench times the transport of its own requests.
const created = {
  volume: {
    volume_id: `default-${randomUUID()}`,
    capacity_bytes: 1024 ** 3,
    volume_context: { backend: 'default' },
    accessible_topology: [{ segments: { 'topology.sinter.csi.io/node': 'bench-node' } }],
  },
};
server.addService(csi.Controller.service, {
  ListVolumes: (_c, cb) => cb(null, page),
  CreateVolume: (_c, cb) => cb(null, created),
  DeleteVolume: (_c, cb) => cb(null, {}),
});
server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    process.stderr.write(`floor server: ${err.message}\n`);
    process.exit(1);
  }
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
