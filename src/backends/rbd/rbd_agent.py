#!/usr/bin/python3
"""sinter's rbd agent: one long-lived librados connection, spoken to over JSON lines.

Started and supervised by src/backends/rbd/agent.ts through src/exec. The first
line on stdin is the connection (monitors, user, key or key file, timeouts): nothing
comes from /etc/ceph or DNS, and the key never appears on a command line. Each
later line is one request {"id", "op", ...}; each answer is one line
{"id", "ok": true, "result"} or {"id", "ok": false, "errno", "error"}.
Requests run on a small thread pool (librbd's Python bindings release the GIL),
so a slow copy does not hold up a create.

Debian's python3-rbd and python3-rados (Ceph's own bindings) are all it needs.
"""
import json
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import rados
import rbd

FEATURES = {
    'layering': rbd.RBD_FEATURE_LAYERING,
    'striping': rbd.RBD_FEATURE_STRIPINGV2,
    'exclusive-lock': rbd.RBD_FEATURE_EXCLUSIVE_LOCK,
    'object-map': rbd.RBD_FEATURE_OBJECT_MAP,
    'fast-diff': rbd.RBD_FEATURE_FAST_DIFF,
    'deep-flatten': rbd.RBD_FEATURE_DEEP_FLATTEN,
    'journaling': rbd.RBD_FEATURE_JOURNALING,
}

out_lock = threading.Lock()


def answer(msg):
    line = json.dumps(msg, separators=(',', ':'))
    with out_lock:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


class Agent:
    def __init__(self, conn):
        t = str(conn.get('timeout', 30))
        # The key itself (from the request's CSI secrets, on this stdin) or the operator's key file.
        auth = {'key': conn['key']} if conn.get('key') else {'keyfile': conn['keyFile']}
        self.cluster = rados.Rados(
            conffile='/dev/null',
            rados_id=conn['user'],
            conf={
                'mon_host': conn['monitors'],
                **auth,
                'client_mount_timeout': t,
                'rados_mon_op_timeout': t,
                'rados_osd_op_timeout': t,
                # Clone format 2: no protected snapshot (the CLI path passes --rbd-default-clone-format 2).
                'rbd_default_clone_format': '2',
            },
        )
        self.cluster.connect(timeout=int(conn.get('timeout', 30)))
        self.ioctxs = {}
        self.io_lock = threading.Lock()
        self.rbd = rbd.RBD()

    def io(self, pool):
        with self.io_lock:
            if pool not in self.ioctxs:
                self.ioctxs[pool] = self.cluster.open_ioctx(pool)
            return self.ioctxs[pool]

    @staticmethod
    def bits(names):
        b = 0
        for n in names:
            b |= FEATURES[n]
        return b

    # -- operations ---------------------------------------------------------

    def op_hello(self, r):
        return {'fsid': self.cluster.get_fsid()}

    def op_create(self, r):
        """An image and its metadata in one call (the record goes with the image)."""
        io = self.io(r['pool'])
        self.rbd.create(io, r['image'], int(r['size']), old_format=False,
                        features=self.bits(r['features']), data_pool=r.get('dataPool'))
        if r.get('meta'):
            try:
                self.new_image_meta(io, r['image'], r['meta'])
            except Exception:
                with rbd.Image(io, r['image']) as img:
                    for k, v in r['meta'].items():
                        img.metadata_set(k, v)
        return None

    @staticmethod
    def new_image_meta(io, name, meta):
        """The metadata of an image just created, in one OSD op.

        librbd's metadata_set opens the image and takes its exclusive lock
        (~25 ms of the ~45 a create costs here); at creation nobody else can
        have the image open (sinter reports it only once its record is there),
        so this makes the one call librbd would make, the rbd class's
        metadata_set on the image header, directly. Falls back to librbd's way
        on any error.
        """
        raw = io.read('rbd_id.' + name)
        (n,) = struct.unpack_from('<I', raw)
        image_id = raw[4:4 + n].decode()
        # A map<string, bufferlist> in Ceph's encoding: count, then length-prefixed keys and values.
        data = struct.pack('<I', len(meta))
        for k, v in meta.items():
            kb, vb = k.encode(), v.encode()
            data += struct.pack('<I', len(kb)) + kb + struct.pack('<I', len(vb)) + vb
        io.execute('rbd_header.' + image_id, 'rbd', 'metadata_set', data)

    def op_meta_set(self, r):
        with rbd.Image(self.io(r['pool']), r['image']) as img:
            img.metadata_set(r['key'], r['value'])
        return None

    def op_meta_list(self, r):
        with rbd.Image(self.io(r['pool']), r['image'], read_only=True) as img:
            return dict(img.metadata_list())

    def op_df(self, r):
        ret, out, err = self.cluster.mon_command(json.dumps({'prefix': 'df', 'format': 'json'}), b'', timeout=int(r.get('timeout', 30)))
        if ret != 0:
            raise OSError(-ret, err)
        return json.loads(out)

    def op_info(self, r):
        with rbd.Image(self.io(r['pool']), r['image'], read_only=True) as img:
            out = {'name': r['image'], 'id': img.id(), 'size': img.size(), 'snapshot_count': len(list(img.list_snaps())), 'features': [n for n, b in FEATURES.items() if img.features() & b]}
            # As `rbd info` has it: an image without its record is another controller's create in progress only while young.
            out['create_timestamp'] = img.create_timestamp().strftime('%Y-%m-%dT%H:%M:%SZ')
            try:
                p = img.get_parent_image_spec()
            except rbd.ImageNotFound:
                p = None
            if p:
                # Ceph 16's binding leaves the parent's id and trash flag out of the spec.
                pid = img.parent_id()
                trashed = any(t.get('id') == pid for t in self.rbd.trash_list(self.io(p['pool_name'])))
                out['parent'] = {'pool': p['pool_name'], 'image': p['image_name'], 'id': pid, 'snapshot': p['snap_name'], 'trash': trashed}
            return out

    def op_snap_create(self, r):
        with rbd.Image(self.io(r['pool']), r['image']) as img:
            img.create_snap(r['snap'])
        return None

    def op_snap_remove(self, r):
        with rbd.Image(self.io(r['pool']), r['image']) as img:
            img.remove_snap(r['snap'])
        return None

    def op_clone(self, r):
        io = self.io(r['pool'])
        self.rbd.clone(io, r['image'], r['snap'], io, r['dest'], features=self.bits(r['features']), data_pool=r.get('dataPool'))
        return None

    def op_remove(self, r):
        self.rbd.remove(self.io(r['pool']), r['image'])
        return None

    def op_trash_move(self, r):
        self.rbd.trash_move(self.io(r['pool']), r['image'], 0)
        return None

    def op_copy_group_snap(self, r):
        """A new image `dest` holding `image` as the group snapshot `groupSnap` of group `group` saw it.

        Ceph 16 cannot clone from a group snapshot (rbd_clone4 by snapshot id came in 19),
        so the member is copied out (sparse: librbd skips what the snapshot never wrote).
        """
        io = self.io(r['pool'])
        with rbd.Image(io, r['image'], read_only=True) as img:
            snap_id = None
            for s in img.list_snaps():
                g = s.get('group')
                if s.get('namespace') == rbd.RBD_SNAP_NAMESPACE_TYPE_GROUP and g and g.get('name') == r['group'] and g.get('snap_name') == r['groupSnap']:
                    snap_id = s['id']
            if snap_id is None:
                raise OSError(2, 'image %s has no snapshot of group snapshot %s@%s' % (r['image'], r['group'], r['groupSnap']))
            img.set_snap_by_id(snap_id)
            img.copy(io, r['dest'], features=self.bits(r['features']), data_pool=r.get('dataPool'))
        return None


def errno_of(e):
    n = getattr(e, 'errno', None)
    if isinstance(n, int):
        return abs(n)
    return None


def main():
    first = sys.stdin.readline()
    if not first:
        return
    try:
        agent = Agent(json.loads(first))
    except Exception as e:  # the connection failed: say why once, then exit
        answer({'id': 0, 'ok': False, 'errno': errno_of(e), 'error': 'connect: %s' % e})
        return
    # The global id of this connection: its watches on images are the controller's own, never a node's client to fence.
    answer({'id': 0, 'ok': True, 'result': {'instanceId': agent.cluster.get_instance_id()}})
    pool = ThreadPoolExecutor(max_workers=8)

    def serve(req):
        rid = req.get('id')
        try:
            fn = getattr(agent, 'op_' + str(req.get('op')), None)
            if fn is None:
                raise OSError(22, 'unknown op %s' % req.get('op'))
            answer({'id': rid, 'ok': True, 'result': fn(req)})
        except Exception as e:
            answer({'id': rid, 'ok': False, 'errno': errno_of(e), 'error': '%s: %s' % (type(e).__name__, e)})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            continue
        pool.submit(serve, req)
    pool.shutdown(wait=True)
    agent.cluster.shutdown()


if __name__ == '__main__':
    main()
