package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podidentity/podidentity/internal/sandbox/agent"
	"github.com/podidentity/podidentity/internal/sandbox/proc"
)

// A node deleted and added again, for the chaos harness (cmd/chaos): as when a VMSS instance is
// deleted, its pods stop and its NMI with them, and the Node object goes. The Pod objects stay:
// kube-controller-manager's PodGC deletes pods bound to a missing node only once the node has
// been missing for its 40 s quarantine (checked every 20 s, so 40-80 s after the delete). A node
// added back before that runs them again; after that, their controllers have made new ones.

// nodeLife is one node's agent run and whether the node is deleted.
type nodeLife struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	down   bool
	gen    int // how many times the node was added again (names its new pod namespaces)
}

// ErrNodeState is a DeleteNode of a deleted node or a ReAddNode of a running one.
var ErrNodeState = errors.New("node is not in the state this needs")

// runAgent runs n's agent until runCtx ends or DeleteNode stops it.
func (s *Sandbox) runAgent(runCtx context.Context, n *Node) {
	ctx, cancel := context.WithCancel(runCtx)
	done := make(chan struct{})
	n.life.mu.Lock()
	n.life.cancel, n.life.done = cancel, done
	n.life.mu.Unlock()
	a := n.agent
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		if err := a.Run(ctx); err != nil {
			s.log.Error(err, "node agent stopped", "node", n.Name)
		}
	}()
}

// node finds a node by name.
func (s *Sandbox) node(name string) (*Node, error) {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no sandbox node is called %q: use one of the names in Sandbox.Nodes", name)
}

// NodeDown reports whether DeleteNode has deleted the node and ReAddNode not yet added it back.
func (s *Sandbox) NodeDown(name string) bool {
	n, err := s.node(name)
	if err != nil {
		return false
	}
	n.life.mu.Lock()
	defer n.life.mu.Unlock()
	return n.life.down
}

// DeleteNode stops the node's agent (its pods' containers and networks) and then its NMI (so no
// pod is left running without it), and deletes the Node object.
func (s *Sandbox) DeleteNode(ctx context.Context, name string) error {
	n, err := s.node(name)
	if err != nil {
		return err
	}
	n.life.mu.Lock()
	if n.life.down {
		n.life.mu.Unlock()
		return fmt.Errorf("deleting node %s: it is deleted already: %w", name, ErrNodeState)
	}
	n.life.down = true
	cancel, done := n.life.cancel, n.life.done
	n.life.mu.Unlock()
	cancel()
	<-done
	if n.NMI != nil {
		n.NMI.stopAndWait()
	}
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, s.Opts.StartTimeout, true, func(ctx context.Context) (bool, error) {
		err := s.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		return err == nil || apierrors.IsNotFound(err), nil // retried through an apiserver restart
	})
}

// ReAddNode registers the node again, starts its NMI (with the NMI pod the DaemonSet has for it
// then) and, once NMI is ready, a fresh agent, which runs the pods still bound to the node.
func (s *Sandbox) ReAddNode(ctx context.Context, name string) error {
	n, err := s.node(name)
	if err != nil {
		return err
	}
	n.life.mu.Lock()
	if !n.life.down {
		n.life.mu.Unlock()
		return fmt.Errorf("adding node %s again: it was not deleted: %w", name, ErrNodeState)
	}
	n.life.gen++
	cfg := n.agent.Config()
	cfg.PodNSPrefix += "r" + strconv.Itoa(n.life.gen)
	n.life.mu.Unlock()
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, s.Opts.StartTimeout, true, func(ctx context.Context) (bool, error) {
		return a.Register(ctx) == nil, nil
	}); err != nil {
		return fmt.Errorf("registering node %s again: %w", name, err)
	}
	if n.NMI != nil {
		pods, err := s.nmiPods(ctx)
		if err != nil {
			return err
		}
		if err := n.NMI.startAgain(s.runCtx, withEnv(n.NMI.spec.Env, podEnv(pods[name]))); err != nil {
			return fmt.Errorf("starting NMI on node %s again: %w", name, err)
		}
		if err := n.NMI.waitHTTP(ctx, s.Opts.StartTimeout, NMIProbePort, "/readyz"); err != nil {
			return fmt.Errorf("NMI on node %s did not become ready again: %w", name, err)
		}
	}
	n.life.mu.Lock()
	n.agent = a
	n.life.down = false
	n.life.mu.Unlock()
	s.runAgent(s.runCtx, n)
	return nil
}

// withEnv returns env with the variables in set replacing those of the same name.
func withEnv(env, set []string) []string {
	names := map[string]bool{}
	for _, kv := range set {
		names[strings.SplitN(kv, "=", 2)[0]] = true
	}
	var out []string
	for _, kv := range env {
		if !names[strings.SplitN(kv, "=", 2)[0]] {
			out = append(out, kv)
		}
	}
	return append(out, set...)
}

// stopAndWait stops the component and waits until its supervisor has ended; a process the
// supervisor started meanwhile (it was restarting after an exit) is stopped too.
func (c *Component) stopAndWait() {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	for {
		c.Stop()
		select {
		case <-done:
			return
		case <-time.After(3 * time.Second): // the supervisor's restart delay is 2 s
		}
	}
}

// startAgain starts a stopped component with env and supervises it again.
func (c *Component) startAgain(runCtx context.Context, env []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	spec := c.spec
	spec.Env = env
	p, err := proc.Start(spec)
	if err != nil {
		return err
	}
	c.spec, c.cur, c.stopping, c.done = spec, p, false, make(chan struct{})
	go c.supervise(runCtx)
	return nil
}
