package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podidentity/podidentity/internal/sandbox/netns"
	"github.com/podidentity/podidentity/internal/sandbox/topology"
)

// Every sandbox run owns a directory <tmp>/podid-sbx-<id> holding owner.pid, and namespaces
// named podid-sbx-<id>-*. A run whose owner process is gone is a leftover of a crash.
const (
	namePrefix = "podid-sbx-"
	ownerFile  = "owner.pid"
)

// runDirs lists the run directories under root.
func runDirs(root string) []string {
	m, _ := filepath.Glob(filepath.Join(root, namePrefix+"*"))
	return m
}

func runID(dir string) string { return strings.TrimPrefix(filepath.Base(dir), namePrefix) }

// owner returns the pid recorded in a run directory and whether that process still runs. The
// file holds "<pid> <start time>" so that a recycled pid is not taken for the owner.
func owner(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, processStart(pid) == f[1]
}

// processStart is the start time of a process in clock ticks since boot (/proc/<pid>/stat
// field 22), or "" when it does not exist.
func processStart(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; fields after its closing parenthesis are plain.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func writeOwner(dir string) error {
	pid := os.Getpid()
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(fmt.Sprintf("%d %s\n", pid, processStart(pid))), 0o644)
}

// killProcessesMentioning kills processes whose command line contains s (the children of a
// crashed run all name its directory in their arguments).
func killProcessesMentioning(s string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// CleanupLeftovers removes what crashed earlier runs left behind (namespaces, processes,
// directories), leaving live runs alone. It reports what it removed through progress.
func CleanupLeftovers(ctx context.Context, root string, progress func(string, ...any)) error {
	live := map[string]bool{}
	var errs []error
	for _, dir := range runDirs(root) {
		if pid, ok := owner(dir); ok {
			live[runID(dir)] = true
			continue
		} else if fi, err := os.Stat(dir); pid == 0 && err == nil && time.Since(fi.ModTime()) < 30*time.Second {
			// A run that is just starting has not written its owner file yet.
			live[runID(dir)] = true
			continue
		} else {
			progress("removing leftovers of an earlier sandbox run %s (owner pid %d gone)", runID(dir), pid)
		}
		killProcessesMentioning(dir)
		if err := topology.RemoveAll(ctx, namePrefix+runID(dir)+"-"); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	// Namespaces whose run directory is gone entirely.
	names, err := netns.List(namePrefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range names {
		id, _, _ := strings.Cut(strings.TrimPrefix(n, namePrefix), "-")
		if live[id] {
			continue
		}
		progress("removing leftover network namespace %s", n)
		if err := netns.Delete(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Down stops every live sandbox run under root (SIGTERM to its owner, which cleans up), waits
// for them, then removes leftovers.
func Down(ctx context.Context, root string, progress func(string, ...any)) error {
	for _, dir := range runDirs(root) {
		pid, ok := owner(dir)
		if !ok {
			continue
		}
		progress("stopping sandbox run %s (pid %d)", runID(dir), pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
				break
			}
			if _, alive := owner(dir); !alive {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return CleanupLeftovers(ctx, root, progress)
}
