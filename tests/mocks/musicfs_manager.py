'''musicfsd (org.musicfs.Manager) mock template for python-dbusmock

A stand-in for the whole MusicFS management API (introspection/org.musicfs.Manager.xml and
org.musicfs.Origin.xml), for testing clients without a FUSE mount: musicfsctl's own tests, and
desktop integrations (applets, file-manager extensions). Load it by path:

    (p_mock, obj) = DBusTestCase.spawn_server_template('/path/to/musicfs_manager.py', {...})
    python3 -m dbusmock --system --template /path/to/musicfs_manager.py

It has every capability (the cache and its pins, search) unless told otherwise with the
"NotSupported" parameter, so a client can be written against the complete API today.

Parameters (all optional):
  Version (s), State (s), MountPoint (s; "" = unmounted), ConfiguredMountPoint (s: what Mount("")
  mounts), Passthrough (b), CacheBytes (t), CacheBudget (t),
  Origins (aa{sv}): one dict per origin with Name, Url and optionally Kind, Priority, Health,
      ConsecutiveFailures, LastLatencyUSec, LastCheckUSec, LastError, TrackCount,
  Tracks (a(ssss)): the library (path, artist, album, title) that Search looks in and Pin resolves
      paths in,
  TrackBytes (t, default 8 MiB): the size of every track, for the cache figures,
  Failpoints (as): failpoint names; FailpointsSupported (b): false acts like -Dfailpoints=false,
  NotSupported (as): method names that answer org.musicfs.Error.NotSupported, like the daemon does
      for capabilities that have not landed yet,
  Authorized (b, default true): false refuses every privileged method with AccessDenied,
  AutoScan (b, default true): Rescan/AddOrigin run a simulated scan (ScanProgress steps, then
      ScanFinished per origin); false leaves that to EmitScanProgress/EmitScanFinished,
  ScanStepMs (u, default 20): time between simulated scan steps.

Mock control (interface org.freedesktop.DBus.Mock), besides dbusmock's own (GetCalls, EmitSignal,
...): SetState(s), SetOriginHealth(s name, s health, s last_error), EmitScanProgress(s, t, t),
EmitScanFinished(s, u, u, u), SetAutoScan(b), SetAuthorized(b), GetAuthorizationChecks() ->
a(sb) (polkit action, interactive authorization allowed), SetNotSupported(as), SetMountBusy(b),
SetReloadError(s), SetCacheStats(a{sv}), SetVerifyResult(a{sv}) (what VerifyCache answers; with
repair, "repaired" becomes bad + missing + orphans and the next verification finds nothing),
SetVerifyBusy(b) (true: VerifyCache answers Busy, as while one runs).

The cache behaves like the daemon's, as far as a client can see: Pin resolves the path against
Tracks (NoSuchFile otherwise, "/" is everything), pinned tracks count in pinned-bytes and
pin-bytes-total/-done, ClearCache keeps the pinned bytes, SetPassthrough moves Passthrough and
passthrough-reason, and CacheBytes follows.
'''

# SPDX-License-Identifier: LGPL-2.1-or-later

import re
import time
import urllib.parse

import dbus
import dbus.service
from gi.repository import GLib

from dbusmock import MOCK_IFACE, mockobject

BUS_NAME = 'org.musicfs.Manager'
MAIN_OBJ = '/org/musicfs/Manager'
MAIN_IFACE = 'org.musicfs.Manager'
ORIGIN_IFACE = 'org.musicfs.Origin'
ORIGIN_PREFIX = MAIN_OBJ + '/origin'
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True

ERROR_INVALID_ARGS = 'org.musicfs.Error.InvalidArgs'
ERROR_NOT_SUPPORTED = 'org.musicfs.Error.NotSupported'
ERROR_NO_SUCH_FAILPOINT = 'org.musicfs.Error.NoSuchFailpoint'
ERROR_NOT_MOUNTED = 'org.musicfs.Error.NotMounted'
ERROR_BUSY = 'org.musicfs.Error.Busy'
ERROR_NO_SUCH_ORIGIN = 'org.musicfs.Error.NoSuchOrigin'
ERROR_ORIGIN_EXISTS = 'org.musicfs.Error.OriginExists'
ERROR_INVALID_CONFIG = 'org.musicfs.Error.InvalidConfig'
ERROR_NO_SUCH_FILE = 'org.musicfs.Error.NoSuchFile'
ERROR_CACHE_FULL = 'org.musicfs.Error.CacheFull'
ERROR_ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'

ACTION_MOUNT = 'org.musicfs.manager.mount'
ACTION_ORIGINS = 'org.musicfs.manager.origins'
ACTION_CACHE = 'org.musicfs.manager.cache'
ACTION_FAILPOINTS = 'org.musicfs.manager.failpoints'
ACTION_RELOAD = 'org.musicfs.manager.reload'

DEFAULT_FAILPOINTS = ['catalog-open', 'catalog-commit', 'scan-file', 'scan-batch', 'tree-publish',
                      'origin-open', 'origin-read', 'origin-stat', 'fuse-read', 'fuse-lookup',
                      'fuse-readdir', 'shutdown-drain', 'cache-write', 'cache-rename', 'cache-index', 'cache-index-commit', 'cache-evict', 'cache-touch', 'cache-chunk-read']

DEFAULT_ORIGINS = [
    {'Name': 'music', 'Url': '/srv/music', 'Priority': 10, 'TrackCount': 3},
    {'Name': 'nas', 'Url': '/mnt/nas/music', 'Priority': 20, 'TrackCount': 2},
]

DEFAULT_TRACKS = [
    ('Miles Davis/Kind of Blue (1959)/01 - So What.flac', 'Miles Davis', 'Kind of Blue', 'So What'),
    ('Miles Davis/Kind of Blue (1959)/02 - Freddie Freeloader.flac', 'Miles Davis', 'Kind of Blue',
     'Freddie Freeloader'),
    ('Miles Davis/Kind of Blue (1959)/03 - Blue in Green.flac', 'Miles Davis', 'Kind of Blue', 'Blue in Green'),
    ('Nina Simone/Pastel Blues (1965)/01 - Be My Husband.mp3', 'Nina Simone', 'Pastel Blues', 'Be My Husband'),
    ('Nina Simone/Pastel Blues (1965)/02 - Nobody Knows You.mp3', 'Nina Simone', 'Pastel Blues',
     'Nobody Knows You When You\'re Down and Out'),
]

NAME_RE = re.compile(r'^[A-Za-z0-9_-]{1,64}$')
# The fail-rs grammar of api/failpoint.h, as far as a mock needs to tell good from bad.
_FP_TERM = (r'(?:\d+(?:\.\d+)?%)?(?:\d+\*)?'
            r'(?:off|return(?:\([A-Z][A-Z0-9]*\))?|sleep\(\d+\)|delay\(\d+\)|pause|yield|'
            r'print(?:\([^()]*\))?|panic|kill)')
FAILPOINT_RE = re.compile(r'^%s(?:->%s)*$' % (_FP_TERM, _FP_TERM))
HEALTH_STATES = ('healthy', 'degraded', 'unhealthy')


def path_encode(name):
    '''sd_bus_path_encode(ORIGIN_PREFIX, name): every byte but [A-Za-z0-9] (and a leading digit)
    becomes _xx.'''
    if not name:
        return ORIGIN_PREFIX + '/_'
    out = []
    for i, ch in enumerate(name.encode('utf-8')):
        c = chr(ch)
        if ('a' <= c <= 'z') or ('A' <= c <= 'Z') or (i > 0 and '0' <= c <= '9'):
            out.append(c)
        else:
            out.append('_%02x' % ch)
    return ORIGIN_PREFIX + '/' + ''.join(out)


def _error(name, message):
    return dbus.exceptions.DBusException(message, name=name)


def _now_usec():
    return dbus.UInt64(int(time.time() * 1000000))


def load(mock, parameters):
    mock.musicfs_not_supported = set(parameters.get('NotSupported', []))
    mock.musicfs_authorized = bool(parameters.get('Authorized', True))
    mock.musicfs_auth_checks = []
    mock.musicfs_auto_scan = bool(parameters.get('AutoScan', True))
    mock.musicfs_scan_step_ms = int(parameters.get('ScanStepMs', 20))
    mock.musicfs_scan_queue = []
    mock.musicfs_scan_timer = 0
    mock.musicfs_mount_busy = False
    mock.musicfs_reload_error = ''
    mock.musicfs_pins = set()
    mock.musicfs_tracks = [tuple(str(x) for x in t) for t in parameters.get('Tracks', DEFAULT_TRACKS)]
    mock.musicfs_failpoints_supported = bool(parameters.get('FailpointsSupported', True))
    mock.musicfs_failpoints = {str(n): ['', 0] for n in parameters.get('Failpoints', DEFAULT_FAILPOINTS)}
    mock.musicfs_configured_mountpoint = str(parameters.get('ConfiguredMountPoint',
                                                            parameters.get('MountPoint', '/srv/music')))
    mock.musicfs_cache_stats = None
    mock.musicfs_track_bytes = int(parameters.get('TrackBytes', 8 << 20))
    mock.musicfs_verify_result = {'checked': 11200, 'bad': 0, 'missing': 0, 'orphans': 0, 'repaired': 0}
    mock.musicfs_verify_busy = False

    mock.AddProperties(MAIN_IFACE, dbus.Dictionary({
        'Version': dbus.String(parameters.get('Version', '0.1.0')),
        'State': dbus.String(parameters.get('State', 'ready')),
        'Passthrough': dbus.Boolean(parameters.get('Passthrough', False)),
        'MountPoint': dbus.String(parameters.get('MountPoint', mock.musicfs_configured_mountpoint)),
        'TrackCount': dbus.UInt64(parameters.get('TrackCount', len(mock.musicfs_tracks))),
        'CacheBytes': dbus.UInt64(parameters.get('CacheBytes', 734003200)),
        'CacheBudget': dbus.UInt64(parameters.get('CacheBudget', 10737418240)),
        'ScanProgress': dbus.Struct(('', dbus.UInt64(0), dbus.UInt64(0)), signature='stt'),
        'Origins': dbus.Array([], signature='o'),
    }, signature='sv'))

    for o in parameters.get('Origins', DEFAULT_ORIGINS):
        _add_origin_object(mock, o, emit=False)
    _update_origins_property(mock, emit=False)


# --------------------------------------------------------------------------------------------------
# Helpers (not on the bus).

def _origin_objects(mock):
    objs = [mockobject.objects[p] for p in mockobject.objects if p.startswith(ORIGIN_PREFIX + '/')]
    return sorted(objs, key=lambda o: (int(o.props[ORIGIN_IFACE]['Priority']), str(o.props[ORIGIN_IFACE]['Name'])))


def _find_origin(mock, name):
    path = path_encode(name)
    obj = mockobject.objects.get(path)
    if obj is None:
        raise _error(ERROR_NO_SUCH_ORIGIN, 'No origin named "%s".' % name)
    return obj


def _add_origin_object(mock, o, emit=True):
    name = str(o['Name'])
    props = dbus.Dictionary({
        'Name': dbus.String(name),
        'Kind': dbus.String(o.get('Kind', 'local')),
        'Url': dbus.String(o.get('Url', '/srv/' + name)),
        'Priority': dbus.UInt32(o.get('Priority', 10)),
        'Health': dbus.String(o.get('Health', 'healthy')),
        'ConsecutiveFailures': dbus.UInt32(o.get('ConsecutiveFailures', 0)),
        'LastLatencyUSec': dbus.UInt64(o.get('LastLatencyUSec', 1200)),
        'LastCheckUSec': dbus.UInt64(o.get('LastCheckUSec', int(time.time() * 1000000))),
        'LastError': dbus.String(o.get('LastError', '')),
        'TrackCount': dbus.UInt64(o.get('TrackCount', 0)),
    }, signature='sv')
    path = path_encode(name)
    mock.AddObject(path, ORIGIN_IFACE, props, [])
    if emit:
        mock.EmitSignal('org.freedesktop.DBus.ObjectManager', 'InterfacesAdded', 'oa{sa{sv}}',
                        [dbus.ObjectPath(path), dbus.Dictionary({ORIGIN_IFACE: props}, signature='sa{sv}')])
    return path


def _update_origins_property(mock, emit=True):
    paths = dbus.Array([dbus.ObjectPath(o.path) for o in _origin_objects(mock)], signature='o')
    if emit:
        _set_props(mock, {'Origins': paths})
    else:
        mock.props[MAIN_IFACE]['Origins'] = paths


def _set_props(obj, changes, iface=MAIN_IFACE):
    '''Sets properties and announces them in one PropertiesChanged, like the daemon.'''
    changed = {}
    for k, v in changes.items():
        if obj.props[iface].get(k) != v:
            obj.props[iface][k] = v
            changed[k] = v
    if changed:
        obj.EmitSignal(dbus.PROPERTIES_IFACE, 'PropertiesChanged', 'sa{sv}as',
                       [iface, dbus.Dictionary(changed, signature='sv'), dbus.Array([], signature='s')])


def _derive_state(mock):
    state = str(mock.props[MAIN_IFACE]['State'])
    if state not in ('ready', 'degraded', 'offline'):
        return
    origins = _origin_objects(mock)
    down = [o for o in origins if o.props[ORIGIN_IFACE]['Health'] == 'unhealthy']
    if origins and len(down) == len(origins):
        new = 'offline'
    elif down:
        new = 'degraded'
    else:
        new = 'ready'
    _set_props(mock, {'State': dbus.String(new)})


def _check_supported(mock, method):
    if method in mock.musicfs_not_supported:
        raise _error(ERROR_NOT_SUPPORTED, '%s is not supported by this version of musicfsd yet.' % method)


def _authorize(mock, message, action):
    interactive = bool(message.get_allow_interactive_authorization()) if message is not None else False
    mock.musicfs_auth_checks.append((action, interactive))
    if not mock.musicfs_authorized:
        raise _error(ERROR_ACCESS_DENIED, 'Access denied: %s requires authorization' % action)


def _check_no_options(options):
    for key in options:
        raise _error(ERROR_INVALID_ARGS, 'Unknown option "%s".' % key)


def _set_scan_progress(mock, origin, processed, total):
    _set_props(mock, {'ScanProgress': dbus.Struct((dbus.String(origin), dbus.UInt64(processed),
                                                   dbus.UInt64(total)), signature='stt')})


def _scan_finished(mock, origin, added, changed, removed):
    _set_scan_progress(mock, '', 0, 0)
    path = path_encode(origin)
    if path in mockobject.objects:
        o = mockobject.objects[path]
        n = max(0, int(o.props[ORIGIN_IFACE]['TrackCount']) + added - removed)
        _set_props(o, {'TrackCount': dbus.UInt64(n)}, ORIGIN_IFACE)
    total = max(0, int(mock.props[MAIN_IFACE]['TrackCount']) + added - removed)
    _set_props(mock, {'TrackCount': dbus.UInt64(total)})
    mock.EmitSignal(MAIN_IFACE, 'ScanFinished', 'suuu',
                    [dbus.String(origin), dbus.UInt32(added), dbus.UInt32(changed), dbus.UInt32(removed)])


def _scan_step(mock):
    '''One step of the simulated scan: the head of the queue advances by one file, or finishes.'''
    if not mock.musicfs_scan_queue:
        mock.musicfs_scan_timer = 0
        return False
    entry = mock.musicfs_scan_queue[0]
    origin, done, total = entry
    if str(origin) not in [str(o.props[ORIGIN_IFACE]['Name']) for o in _origin_objects(mock)]:
        mock.musicfs_scan_queue.pop(0)   # removed while queued: no ScanFinished, like a cancelled scan
        return True
    if done < total:
        entry[1] = done + 1
        _set_scan_progress(mock, origin, done + 1, total)
        return True
    mock.musicfs_scan_queue.pop(0)
    _scan_finished(mock, origin, 0, 0, 0)
    return True


def _queue_scans(mock, names):
    for name in names:
        if any(e[0] == name for e in mock.musicfs_scan_queue):
            continue
        o = mockobject.objects[path_encode(name)]
        mock.musicfs_scan_queue.append([name, 0, int(o.props[ORIGIN_IFACE]['TrackCount'])])
    if mock.musicfs_auto_scan and mock.musicfs_scan_queue and not mock.musicfs_scan_timer:
        mock.musicfs_scan_timer = GLib.timeout_add(max(1, mock.musicfs_scan_step_ms), _scan_step, mock)


# --------------------------------------------------------------------------------------------------
# org.musicfs.Manager

@dbus.service.method(MAIN_IFACE, in_signature='sa{sv}', out_signature='', message_keyword='message')
def Mount(self, mountpoint, options, message=None):
    _check_supported(self, 'Mount')
    _authorize(self, message, ACTION_MOUNT)
    _check_no_options(options)
    current = str(self.props[MAIN_IFACE]['MountPoint'])
    if current:
        raise _error(ERROR_BUSY, 'Already mounted on %s.' % current)
    target = str(mountpoint) or self.musicfs_configured_mountpoint
    if not target.startswith('/'):
        raise _error(ERROR_INVALID_ARGS, 'Mount point "%s" is not an absolute path.' % target)
    _set_props(self, {'MountPoint': dbus.String(target)})


@dbus.service.method(MAIN_IFACE, in_signature='b', out_signature='', message_keyword='message')
def Unmount(self, force, message=None):
    _check_supported(self, 'Unmount')
    _authorize(self, message, ACTION_MOUNT)
    current = str(self.props[MAIN_IFACE]['MountPoint'])
    if not current:
        raise _error(ERROR_NOT_MOUNTED, 'Nothing is mounted.')
    if self.musicfs_mount_busy and not force:
        raise _error(ERROR_BUSY, 'Files are open under %s.' % current)
    _set_props(self, {'MountPoint': dbus.String('')})


@dbus.service.method(MAIN_IFACE, in_signature='ssua{sv}', out_signature='o', message_keyword='message')
def AddOrigin(self, name, url, priority, options, message=None):
    _check_supported(self, 'AddOrigin')
    _authorize(self, message, ACTION_ORIGINS)
    _check_no_options(options)
    if not NAME_RE.match(name):
        raise _error(ERROR_INVALID_ARGS, 'Invalid origin name "%s": use 1-64 of A-Z a-z 0-9 _ -.' % name)
    if url.startswith('s3://') or url.startswith('sftp://'):
        raise _error(ERROR_NOT_SUPPORTED, 'Remote origins are not supported by this version of musicfsd yet.')
    # A local origin's Url is its absolute directory, like the daemon shows it.
    if url.startswith('file:///'):
        kind, url = 'local', urllib.parse.unquote(url[len('file://'):])
    elif url.startswith('/'):
        kind = 'local'
    else:
        raise _error(ERROR_INVALID_ARGS, 'Invalid origin URL "%s".' % url)
    if path_encode(name) in mockobject.objects:
        raise _error(ERROR_ORIGIN_EXISTS, 'An origin named "%s" exists already.' % name)
    path = _add_origin_object(self, {'Name': name, 'Url': url, 'Kind': kind, 'Priority': priority,
                                     'TrackCount': 0, 'LastCheckUSec': 0, 'LastLatencyUSec': 0})
    _update_origins_property(self)
    _queue_scans(self, [name])
    return dbus.ObjectPath(path)


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='', message_keyword='message')
def RemoveOrigin(self, name, message=None):
    _check_supported(self, 'RemoveOrigin')
    _authorize(self, message, ACTION_ORIGINS)
    obj = _find_origin(self, name)
    tracks = int(obj.props[ORIGIN_IFACE]['TrackCount'])
    path = obj.path
    self.EmitSignal('org.freedesktop.DBus.ObjectManager', 'InterfacesRemoved', 'oas',
                    [dbus.ObjectPath(path), dbus.Array([ORIGIN_IFACE], signature='s')])
    self.RemoveObject(path)
    _update_origins_property(self)
    _set_props(self, {'TrackCount': dbus.UInt64(max(0, int(self.props[MAIN_IFACE]['TrackCount']) - tracks))})
    _derive_state(self)


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='s')
def CheckOrigin(self, name):
    _check_supported(self, 'CheckOrigin')
    obj = _find_origin(self, name)
    _set_props(obj, {'LastCheckUSec': _now_usec()}, ORIGIN_IFACE)
    return obj.props[ORIGIN_IFACE]['Health']


@dbus.service.method(MAIN_IFACE, in_signature='', out_signature='a(ssutts)')
def GetOriginHealth(self):
    _check_supported(self, 'GetOriginHealth')
    res = []
    for o in _origin_objects(self):
        p = o.props[ORIGIN_IFACE]
        res.append(dbus.Struct((p['Name'], p['Health'], dbus.UInt32(p['ConsecutiveFailures']),
                                dbus.UInt64(p['LastLatencyUSec']), dbus.UInt64(p['LastCheckUSec']),
                                p['LastError']), signature='ssutts'))
    return dbus.Array(res, signature='(ssutts)')


@dbus.service.method(MAIN_IFACE, in_signature='b', out_signature='', message_keyword='message')
def SetPassthrough(self, enabled, message=None):
    _check_supported(self, 'SetPassthrough')
    _authorize(self, message, ACTION_CACHE)
    _set_props(self, {'Passthrough': dbus.Boolean(enabled)})


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='', message_keyword='message')
def Rescan(self, origin, message=None):
    _check_supported(self, 'Rescan')
    _authorize(self, message, ACTION_ORIGINS)
    if origin:
        _find_origin(self, origin)
        names = [str(origin)]
    else:
        names = [str(o.props[ORIGIN_IFACE]['Name']) for o in _origin_objects(self)]
    _queue_scans(self, names)


@dbus.service.method(MAIN_IFACE, in_signature='su', out_signature='a(ssssd)')
def Search(self, query, limit):
    _check_supported(self, 'Search')
    if limit == 0 or limit > 10000:
        raise _error(ERROR_INVALID_ARGS, 'Limit %d is out of range: use 1-10000.' % limit)
    words = [w.lower() for w in query.split()]
    if not words or len(query.encode('utf-8')) > 1024:
        raise _error(ERROR_INVALID_ARGS, 'The query must have 1 to 1024 bytes.')
    res = []
    for path, artist, album, title in self.musicfs_tracks:
        hay = ' '.join((artist, album, title)).lower()
        hits = sum(1 for w in words if w in hay)
        if hits == len(words):
            res.append(dbus.Struct((path, artist, album, title, dbus.Double(hits / (1.0 + len(hay) / 100.0))),
                                   signature='ssssd'))
    res.sort(key=lambda r: -float(r[4]))
    return dbus.Array(res[:limit], signature='(ssssd)')


def _check_tree_path(path):
    if not path.startswith('/') or len(path.encode('utf-8')) > 4096:
        raise _error(ERROR_INVALID_ARGS, 'The path "%s" is not an absolute path in the mounted tree.' % path)
    parts = [p for p in path.split('/') if p]
    if any(p in ('.', '..') for p in parts):
        raise _error(ERROR_INVALID_ARGS, 'The path "%s" has a "." or ".." component.' % path)
    return '/'.join(parts)


def _tree_path(mock, path):
    '''The daemon's two spellings: a path in the tree, or one under MountPoint.'''
    rel = _check_tree_path(path)
    mnt = str(mock.props[MAIN_IFACE]['MountPoint']).rstrip('/')
    if mnt and (path == mnt or path.startswith(mnt + '/')):
        under = '/'.join(p for p in path[len(mnt):].split('/') if p)
        if _tracks_under(mock, under):
            return under
    return rel


def _tracks_under(mock, rel):
    return [t for t in mock.musicfs_tracks if not rel or t[0] == rel or t[0].startswith(rel + '/')]


def _pinned_tracks(mock):
    return {t[0] for p in mock.musicfs_pins for t in _tracks_under(mock, p)}


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='', message_keyword='message')
def Pin(self, path, message=None):
    _check_supported(self, 'Pin')
    rel = _tree_path(self, path)
    _authorize(self, message, ACTION_CACHE)
    if not _tracks_under(self, rel):
        raise _error(ERROR_NO_SUCH_FILE, 'There is no file or directory "%s" in the library.' % path)
    pinned = len(_pinned_tracks(self) | {t[0] for t in _tracks_under(self, rel)}) * self.musicfs_track_bytes
    if pinned > int(self.props[MAIN_IFACE]['CacheBudget']):
        raise _error(ERROR_CACHE_FULL, 'The files under "%s" do not fit in the cache budget.' % path)
    self.musicfs_pins.add(rel)
    # The mock fetches at once: the pinned files are cached.
    total = max(int(self.props[MAIN_IFACE]['CacheBytes']), len(_pinned_tracks(self)) * self.musicfs_track_bytes)
    _set_props(self, {'CacheBytes': dbus.UInt64(total)})


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='', message_keyword='message')
def Unpin(self, path, message=None):
    _check_supported(self, 'Unpin')
    rel = _tree_path(self, path)
    _authorize(self, message, ACTION_CACHE)
    if rel not in self.musicfs_pins:
        raise _error(ERROR_NO_SUCH_FILE, '"%s" is not pinned.' % path)
    self.musicfs_pins.discard(rel)


@dbus.service.method(MAIN_IFACE, in_signature='', out_signature='a{sv}')
def GetCacheStats(self):
    _check_supported(self, 'GetCacheStats')
    if self.musicfs_cache_stats is not None:
        return self.musicfs_cache_stats
    props = self.props[MAIN_IFACE]
    pinned = len(_pinned_tracks(self)) * self.musicfs_track_bytes
    passthrough = bool(props['Passthrough'])
    return dbus.Dictionary({
        'bytes': dbus.UInt64(props['CacheBytes']),
        'budget': dbus.UInt64(props['CacheBudget']),
        'chunks': dbus.UInt64(int(props['CacheBytes']) // 65536),
        'pinned-bytes': dbus.UInt64(pinned),
        'versions': dbus.UInt64(int(props['CacheBytes']) // max(1, self.musicfs_track_bytes)),
        'dedup-ratio': dbus.Double(1.0),
        'hits': dbus.UInt64(10400),
        'misses': dbus.UInt64(800),
        'evictions': dbus.UInt64(0),
        'evicted-bytes': dbus.UInt64(0),
        'bad-chunks': dbus.UInt64(0),
        'fills-active': dbus.UInt64(0),
        'fills-queued': dbus.UInt64(0),
        'pins': dbus.UInt64(len(self.musicfs_pins)),
        'pin-bytes-total': dbus.UInt64(pinned),
        'pin-bytes-done': dbus.UInt64(pinned),
        'disk-percent': dbus.Double(42.5),
        'passthrough': dbus.Boolean(passthrough),
        'passthrough-reason': dbus.String('manual' if passthrough else 'none'),
    }, signature='sv')


@dbus.service.method(MAIN_IFACE, in_signature='', out_signature='', message_keyword='message')
def ClearCache(self, message=None):
    _check_supported(self, 'ClearCache')
    _authorize(self, message, ACTION_CACHE)
    _set_props(self, {'CacheBytes': dbus.UInt64(len(_pinned_tracks(self)) * self.musicfs_track_bytes)})


@dbus.service.method(MAIN_IFACE, in_signature='b', out_signature='a{sv}', message_keyword='message')
def VerifyCache(self, repair, message=None):
    _check_supported(self, 'VerifyCache')
    if repair:
        _authorize(self, message, ACTION_CACHE)
    if self.musicfs_verify_busy:
        raise _error(ERROR_BUSY, 'A verification of the cache is running already.')
    res = dict(self.musicfs_verify_result)
    if repair:
        res['repaired'] = res['bad'] + res['missing'] + res['orphans']
        self.musicfs_verify_result = dict(res, bad=0, missing=0, orphans=0, repaired=0)
    else:
        res['repaired'] = 0
    return dbus.Dictionary({k: dbus.UInt64(v) for k, v in res.items()}, signature='sv')


def _check_failpoints(mock, name=None):
    if not mock.musicfs_failpoints_supported:
        raise _error(ERROR_NOT_SUPPORTED, 'Failpoints are not compiled into this musicfsd (-Dfailpoints=false).')
    if name is not None and name not in mock.musicfs_failpoints:
        raise _error(ERROR_NO_SUCH_FAILPOINT, 'There is no failpoint named "%s".' % name)


@dbus.service.method(MAIN_IFACE, in_signature='ss', out_signature='', message_keyword='message')
def ArmFailpoint(self, name, actions, message=None):
    _check_failpoints(self)
    _authorize(self, message, ACTION_FAILPOINTS)
    _check_failpoints(self, str(name))
    if not FAILPOINT_RE.match(actions):
        raise _error(ERROR_INVALID_ARGS, 'Invalid actions "%s" for failpoint %s.' % (actions, name))
    self.musicfs_failpoints[str(name)] = [str(actions), 0]


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='', message_keyword='message')
def DisarmFailpoint(self, name, message=None):
    _check_failpoints(self)
    _authorize(self, message, ACTION_FAILPOINTS)
    _check_failpoints(self, str(name))
    self.musicfs_failpoints[str(name)] = ['', 0]


@dbus.service.method(MAIN_IFACE, in_signature='', out_signature='a(ssu)')
def ListFailpoints(self):
    _check_failpoints(self)
    return dbus.Array([dbus.Struct((n, a, dbus.UInt32(f)), signature='ssu')
                       for n, (a, f) in sorted(self.musicfs_failpoints.items())], signature='(ssu)')


@dbus.service.method(MAIN_IFACE, in_signature='', out_signature='', message_keyword='message')
def Reload(self, message=None):
    _check_supported(self, 'Reload')
    _authorize(self, message, ACTION_RELOAD)
    if self.musicfs_reload_error:
        raise _error(ERROR_INVALID_CONFIG, self.musicfs_reload_error)


# --------------------------------------------------------------------------------------------------
# Mock control

@dbus.service.method(MOCK_IFACE, in_signature='s', out_signature='')
def SetState(self, state):
    '''Sets the State property ("starting", "ready", "degraded", "offline", "stopping").'''
    _set_props(self, {'State': dbus.String(state)})


@dbus.service.method(MOCK_IFACE, in_signature='sss', out_signature='')
def SetOriginHealth(self, name, health, last_error):
    '''Moves an origin to health "healthy", "degraded" or "unhealthy" as a health check would:
    PropertiesChanged on the origin, OriginHealthChanged on the Manager, State follows.'''
    if health not in HEALTH_STATES:
        raise _error(ERROR_INVALID_ARGS, 'Unknown health "%s".' % health)
    obj = _find_origin(self, name)
    p = obj.props[ORIGIN_IFACE]
    before = str(p['Health'])
    failures = 0 if health == 'healthy' else int(p['ConsecutiveFailures']) + 1
    _set_props(obj, {'Health': dbus.String(health), 'ConsecutiveFailures': dbus.UInt32(failures),
                     'LastError': dbus.String(last_error), 'LastCheckUSec': _now_usec()}, ORIGIN_IFACE)
    if before != health:
        self.EmitSignal(MAIN_IFACE, 'OriginHealthChanged', 'sss', [name, before, health])
    _derive_state(self)


@dbus.service.method(MOCK_IFACE, in_signature='stt', out_signature='')
def EmitScanProgress(self, origin, processed, total):
    '''Sets ScanProgress (PropertiesChanged), as the daemon does while it scans.'''
    _set_scan_progress(self, origin, processed, total)


@dbus.service.method(MOCK_IFACE, in_signature='suuu', out_signature='')
def EmitScanFinished(self, origin, added, changed, removed):
    '''Ends a scan of origin: ScanProgress back to idle, TrackCount adjusted, ScanFinished emitted.'''
    self.musicfs_scan_queue = [e for e in self.musicfs_scan_queue if e[0] != origin]
    _scan_finished(self, str(origin), int(added), int(changed), int(removed))


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def SetAutoScan(self, enabled):
    '''true: Rescan runs a simulated scan by itself; false: the test emits progress and the end.'''
    self.musicfs_auto_scan = bool(enabled)
    if enabled:
        _queue_scans(self, [])


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def SetAuthorized(self, authorized):
    '''false: every privileged method answers org.freedesktop.DBus.Error.AccessDenied.'''
    self.musicfs_authorized = bool(authorized)


@dbus.service.method(MOCK_IFACE, in_signature='', out_signature='a(sb)')
def GetAuthorizationChecks(self):
    '''The polkit actions privileged calls asked for, with whether the caller allowed interactive
    authorization (sd_bus_set_allow_interactive_authorization), oldest first.'''
    return dbus.Array([dbus.Struct((a, dbus.Boolean(i)), signature='sb') for a, i in self.musicfs_auth_checks],
                      signature='(sb)')


@dbus.service.method(MOCK_IFACE, in_signature='as', out_signature='')
def SetNotSupported(self, methods):
    '''Method names that answer org.musicfs.Error.NotSupported from now on.'''
    self.musicfs_not_supported = set(str(m) for m in methods)


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def SetMountBusy(self, busy):
    '''true: Unmount(false) answers org.musicfs.Error.Busy, as with files open under the mount.'''
    self.musicfs_mount_busy = bool(busy)


@dbus.service.method(MOCK_IFACE, in_signature='s', out_signature='')
def SetReloadError(self, message):
    '''Non-empty: Reload answers org.musicfs.Error.InvalidConfig with this message ("FILE:LINE: reason").'''
    self.musicfs_reload_error = str(message)


@dbus.service.method(MOCK_IFACE, in_signature='a{sv}', out_signature='')
def SetCacheStats(self, stats):
    '''What GetCacheStats answers from now on.'''
    self.musicfs_cache_stats = dbus.Dictionary(stats, signature='sv')


@dbus.service.method(MOCK_IFACE, in_signature='a{sv}', out_signature='')
def SetVerifyResult(self, result):
    '''The figures VerifyCache finds (checked, bad, missing, orphans) from now on.'''
    self.musicfs_verify_result.update({str(k): int(v) for k, v in result.items()})


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def SetVerifyBusy(self, busy):
    '''true: VerifyCache answers org.musicfs.Error.Busy, as while a verification runs.'''
    self.musicfs_verify_busy = bool(busy)
