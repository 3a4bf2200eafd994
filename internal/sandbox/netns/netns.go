// Package netns creates and removes the sandbox's named network namespaces and opens sockets
// inside them.
//
// Namespaces and links are made with iproute2 (`ip netns add`, `ip -n <ns> link add ...`), never
// in the caller's own namespace: a veth is always created inside one sandbox namespace with its
// peer placed directly into another, so not even a transient interface appears in the machine's
// namespace. Sockets are opened from Go on a thread that has joined the target namespace
// (setns); a socket stays in the namespace it was created in, so the rest of the program can
// serve or dial through it from any goroutine.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is where iproute2 keeps named namespaces.
const Dir = "/run/netns"

// ErrUnsupported means this machine cannot run the sandbox's namespaces.
var ErrUnsupported = errors.New("network namespaces are not usable here")

// Check verifies the prerequisites: root, iproute2 and iptables installed, and namespaces
// supported by the kernel. The error names the fix.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: the sandbox creates network namespaces and must run as root (try sudo)", ErrUnsupported)
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%w: %q not found in PATH: install it with `apt-get install -y iproute2 iptables`", ErrUnsupported, bin)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: the kernel has no network namespace support (/proc/self/ns/net: %v)", ErrUnsupported, err)
	}
	return nil
}

// IP runs `ip args...` and returns its combined output; the error quotes the command and output.
func IP(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Add creates a named namespace with its loopback up.
func Add(ctx context.Context, name string) error {
	if _, err := IP(ctx, "netns", "add", name); err != nil {
		return err
	}
	_, err := IP(ctx, "-n", name, "link", "set", "lo", "up")
	return err
}

// Delete removes a named namespace after killing every process still inside it (a namespace
// with processes lives on, unnamed, after `ip netns delete`). Missing namespaces are fine.
func Delete(ctx context.Context, name string) error {
	if _, err := os.Stat(filepath.Join(Dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	KillAll(ctx, name)
	_, err := IP(ctx, "netns", "delete", name)
	return err
}

// KillAll sends SIGKILL to every process inside namespace name.
func KillAll(ctx context.Context, name string) {
	out, err := IP(ctx, "netns", "pids", name)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// List returns the named namespaces whose name starts with prefix, sorted.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", Dir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Sysctl writes a sysctl inside namespace name (never in the caller's namespace): /proc/sys/net
// shows the namespace of the thread that opens it.
func Sysctl(name, key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return Do(name, func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in namespace %s: %w", key, value, name, err)
		}
		return nil
	})
}

// Do runs fn on an OS thread that has joined namespace name, then returns the thread to the
// caller's namespace. fn must not start goroutines that expect to be inside the namespace.
func Do(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening this thread's network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(filepath.Join(Dir, name))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so the runtime discards it when this goroutine ends instead of
		// reusing a thread that lives in the wrong namespace.
		return errors.Join(fnErr, fmt.Errorf("returning from network namespace %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Listen opens a TCP listener on addr inside namespace name.
func Listen(name, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(name, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s in namespace %s: %w", addr, name, err)
	}
	return ln, nil
}

// Dialer returns a DialContext that opens connections from inside namespace name (the socket
// is created there; connecting then proceeds from any thread).
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(name, func() error {
			var err error
			d := net.Dialer{}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
