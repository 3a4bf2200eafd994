// Package proc runs the sandbox's child processes: each in its own process group, killed by the
// kernel if the sandbox dies (Pdeathsig), logging to a file, and stopped with SIGTERM then
// SIGKILL.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec describes one process.
type Spec struct {
	// Name is used in log file names and messages.
	Name string
	Path string
	Args []string
	Env  []string
	// NetNS, when set, runs the process inside that named network namespace (`ip netns exec`).
	NetNS string
	// LogDir receives <Name>.log.
	LogDir string
}

// Process is a running child.
type Process struct {
	Spec Spec
	Cmd  *exec.Cmd
	Log  string

	done chan struct{}
	mu   sync.Mutex
	err  error
}

// Start starts the process.
func Start(s Spec) (*Process, error) {
	logPath := filepath.Join(s.LogDir, s.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", s.Name, err)
	}
	path, args := s.Path, s.Args
	if s.NetNS != "" {
		path, args = "ip", append([]string{"netns", "exec", s.NetNS, s.Path}, s.Args...)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", s.Name, s.Path, err)
	}
	p := &Process{Spec: s, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the exit error after Done.
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs it.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	p.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not stop within %s of SIGTERM and was killed", p.Spec.Name, grace)
}

// Tail returns the last n lines of the process's log, for error messages.
func (p *Process) Tail(n int) string { return TailFile(p.Log, n) }

// TailFile returns the last n lines of a file.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ErrExited means a process ended while something waited for it to become ready.
var ErrExited = errors.New("process exited")

// WaitReady polls ready every interval until it returns nil, the process exits, or ctx ends.
func (p *Process) WaitReady(ctx context.Context, interval time.Duration, ready func(context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s: %w (%v); last log lines:\n%s", p.Spec.Name, ErrExited, p.Err(), p.Tail(15))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v); last log lines:\n%s", p.Spec.Name, ctx.Err(), last, p.Tail(15))
		case <-t.C:
		}
	}
}
