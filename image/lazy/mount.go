package lazy

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"time"
	"unsafe"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mount is a Layer served read-only over FUSE at a directory: the lower
// directory of an overlay while the layer is not on disk yet.
type Mount struct {
	Dir    string
	server *fuse.Server
	// dev is a duplicate of the connection's /dev/fuse descriptor and
	// init the kernel's INIT of it: what another process needs to go on
	// serving the connection (Adopt) after this one is gone.
	dev  *os.File
	init []byte
}

// attrTimeout is how long the kernel may cache names and attributes: the
// layer never changes.
const attrTimeout = time.Hour

// mountOptions are the go-fuse options of every mount and adoption: an
// adopted connection must be served as it was negotiated.
func mountOptions() *fuse.MountOptions {
	return &fuse.MountOptions{
		FsName: "berth-lazy", Name: "berth-lazy", MaxReadAhead: 1 << 20,
		MaxWrite: 128 << 10,
	}
}

// MountLayer serves l at dir, an existing empty directory, until Unmount.
// Every entry of the TOC is there with its mode, owner, size, times,
// device numbers, link target and extended attributes; a file's content
// is read through l, and a read that fails (the registry gone, a chunk
// that does not match its digest) fails with EIO and a log line.
//
// berth mounts /dev/fuse itself rather than through go-fuse so that it
// holds the connection's descriptor: Dev hands a duplicate of it to a
// keeper, from which a new process adopts the connection.
func MountLayer(dir string, l *Layer, log *slog.Logger) (*Mount, error) {
	fsys, err := newLayerFS(l, log.With("mount", dir))
	if err != nil {
		return nil, fmt.Errorf("mount eStargz layer at %s: %w", dir, err)
	}
	opts := mountOptions()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("mount eStargz layer at %s: %w", dir, err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,max_read=%d,allow_other,default_permissions", fd, opts.MaxWrite)
	// The layer's owners and modes are checked by the kernel
	// (default_permissions) for every user of the overlay above it.
	if err := unix.Mount("berth-lazy", dir, "fuse.berth-lazy", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount eStargz layer at %s: %w", dir, err)
	}
	dev, err := dupFile(fd)
	if err == nil {
		var server *fuse.Server
		server, err = fuse.NewServer(fsys, fmt.Sprintf("/dev/fd/%d", fd), opts)
		if err == nil {
			go server.Serve()
			pollHack(dir)
			init := server.KernelSettings()
			return &Mount{Dir: dir, server: server, dev: dev, init: initBytes(init)}, nil
		}
		dev.Close()
	} else {
		unix.Close(fd)
	}
	_ = unix.Unmount(dir, unix.MNT_DETACH)
	return nil, fmt.Errorf("mount eStargz layer at %s: %w", dir, err)
}

// Dev is a duplicate of the mount's /dev/fuse descriptor, owned by the
// Mount, and the kernel's INIT of the connection, for Adopt. The kernel
// keeps a connection while any of its descriptors is open: a keeper
// holding a duplicate keeps the layer's overlays working, their reads
// waiting, until a new server adopts it.
func (m *Mount) Dev() (*os.File, []byte) { return m.dev, m.init }

// Adopt serves l on the FUSE connection dev, mounted at dir by a server
// that is gone, from which init is the kernel's INIT (Dev). The kernel
// sends INIT only once per connection, and go-fuse starts a server only
// on one: Adopt gives go-fuse that INIT from a socket, then puts the
// connection in the socket's place before go-fuse reads a request.
// Requests the old server read and never answered are sent again
// (FUSE_NOTIFY_RESEND, Linux 6.9); on older kernels their readers wait
// until they are killed. Node IDs are TOC order, the same in every
// process serving the layer: the kernel's names stay valid.
func Adopt(dir string, dev *os.File, init []byte, l *Layer, log *slog.Logger) (*Mount, error) {
	fsys, err := newLayerFS(l, log.With("mount", dir))
	if err != nil {
		return nil, fmt.Errorf("adopt eStargz mount at %s: %w", dir, err)
	}
	// The kernel's INIT may be shorter than go-fuse's InitIn (older
	// kernels): its header says how long.
	if len(init) != int(unsafe.Sizeof(fuse.InitIn{})) {
		return nil, fmt.Errorf("adopt eStargz mount at %s: not a FUSE INIT of %d bytes", dir, len(init))
	}
	in := (*fuse.InHeader)(unsafe.Pointer(unsafe.SliceData(init)))
	if in.Length > uint32(len(init)) || in.Length < uint32(unsafe.Sizeof(fuse.InHeader{}))+16 || in.Opcode != opInit {
		return nil, fmt.Errorf("adopt eStargz mount at %s: not a FUSE INIT of %d bytes", dir, len(init))
	}
	msg := init[:in.Length]
	own, err := dupFile(int(dev.Fd()))
	if err != nil {
		return nil, fmt.Errorf("adopt eStargz mount at %s: %w", dir, err)
	}
	server, err := adoptServer(fsys, int(own.Fd()), msg)
	if err != nil {
		own.Close()
		return nil, fmt.Errorf("adopt eStargz mount at %s: %w", dir, err)
	}
	go server.Serve()
	if err := notifyResend(int(own.Fd())); err != nil {
		log.Warn("eStargz mount adopted, but requests its old server had read are not sent again: their readers wait until killed", "mount", dir, "error", err)
	}
	return &Mount{Dir: dir, server: server, dev: own, init: slices.Clone(init)}, nil
}

// adoptServer starts a go-fuse server on a socket that holds only INIT,
// then replaces the socket by a duplicate of the connection fd under the
// same descriptor number (go-fuse reads its descriptor by number).
// init is the kernel's INIT message as it sent it.
func adoptServer(fsys fuse.RawFileSystem, fd int, init []byte) (*fuse.Server, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pair[1])
	// go-fuse's InitIn starts with the request's header: init is the
	// kernel's whole INIT message.
	if _, err := unix.Write(pair[1], init); err != nil {
		unix.Close(pair[0])
		return nil, fmt.Errorf("replay INIT: %w", err)
	}
	server, err := fuse.NewServer(fsys, fmt.Sprintf("/dev/fd/%d", pair[0]), mountOptions())
	if err != nil {
		// go-fuse closed pair[0] or never owned it; either way the
		// number must not be closed twice.
		return nil, fmt.Errorf("replay INIT: %w", err)
	}
	// go-fuse answered INIT on the socket; from now on the same number
	// is the connection.
	if err := unix.Dup3(fd, pair[0], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("take over connection: %w", err)
	}
	return server, nil
}

// opInit is FUSE_INIT's opcode.
const opInit = 26

// pollHack makes the kernel ask for poll support once, answered "not
// supported" by go-fuse for its magic name, as go-fuse's own mounts do:
// otherwise a Go program opening a file of the mount (the tests, which
// run the server in the same process) registers it with epoll, and the
// kernel's poll request can deadlock against the runtime's poller. The
// answer holds for the connection, adopted ones too.
func pollHack(dir string) {
	fd, err := unix.Open(filepath.Join(dir, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	unix.Close(fd)
}

// notifyResend asks the kernel to send again the requests a dead server
// had read and not answered.
func notifyResend(fd int) error {
	const notifyResend = 7 // FUSE_NOTIFY_RESEND
	hdr := fuse.OutHeader{Length: uint32(unsafe.Sizeof(fuse.OutHeader{})), Status: notifyResend}
	_, err := unix.Write(fd, unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), unsafe.Sizeof(hdr)))
	return err
}

func initBytes(in *fuse.InitIn) []byte {
	return slices.Clone(unsafe.Slice((*byte)(unsafe.Pointer(in)), unsafe.Sizeof(*in)))
}

func dupFile(fd int) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("dup /dev/fuse: %w", err)
	}
	return os.NewFile(uintptr(d), "/dev/fuse"), nil
}

// Detach unmounts the layer's directory. It fails (EBUSY) while a file
// or directory of the mount is open, but not for an overlay mounted on
// it: overlayfs holds a private clone of each lower mount, which the
// server goes on serving until the last such overlay is unmounted.
// Drained waits for that.
func (m *Mount) Detach() error {
	if err := unix.Unmount(m.Dir, 0); err != nil {
		return fmt.Errorf("unmount eStargz layer at %s: %w", m.Dir, err)
	}
	return nil
}

// Drained waits until nothing uses the detached mount any more and its
// server has ended.
func (m *Mount) Drained() {
	m.server.Wait()
	m.dev.Close()
}

// Unmount detaches the layer and waits for its server to end.
func (m *Mount) Unmount() error {
	if err := m.Detach(); err != nil {
		return err
	}
	m.Drained()
	return nil
}

// fill is an entry's attributes as the kernel sees them.
func fill(e *estargz.TOCEntry, out *fuse.Attr) {
	fi := e.Stat().Mode()
	out.Mode = uint32(fi.Perm())
	if fi&os.ModeSetuid != 0 {
		out.Mode |= syscall.S_ISUID
	}
	if fi&os.ModeSetgid != 0 {
		out.Mode |= syscall.S_ISGID
	}
	if fi&os.ModeSticky != 0 {
		out.Mode |= syscall.S_ISVTX
	}
	out.Uid, out.Gid = uint32(e.UID), uint32(e.GID)
	out.Size = uint64(e.Size)
	if e.Type == "symlink" {
		// As every Linux file system shows a link, whatever the tar says.
		out.Mode = 0o777
		out.Size = uint64(len(e.LinkName))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Nlink = uint32(max(e.NumLink, 1))
	mt := e.ModTime()
	out.SetTimes(&mt, &mt, &mt)
	out.Rdev = uint32(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor)))
}

func xattr(e *estargz.TOCEntry, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := e.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func listXattr(e *estargz.TOCEntry, dest []byte) (uint32, syscall.Errno) {
	var names []string
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf []byte
	for _, k := range names {
		buf = append(append(buf, k...), 0)
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), syscall.ERANGE
	}
	return uint32(copy(dest, buf)), 0
}
