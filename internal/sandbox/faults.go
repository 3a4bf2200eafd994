package sandbox

import (
	"context"
	"time"
)

// Control-plane faults for the chaos harness (cmd/chaos). Neither may run while Close does.

// PauseEtcd freezes etcd for d, then resumes it.
func (s *Sandbox) PauseEtcd(ctx context.Context, d time.Duration) error {
	return s.cp.PauseEtcd(ctx, d)
}

// RestartAPIServer restarts kube-apiserver on the same port and waits until it is ready.
func (s *Sandbox) RestartAPIServer(ctx context.Context) error {
	return s.cp.RestartAPIServer(ctx, s.Opts.StartTimeout)
}
