package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
)

// Agent is one node's NMI: store, watches, Secret watcher, event recorder, server and token
// listener, built from one Config and run by Run. cmd/nmi and the tests start NMI only this way,
// so both run the same wiring and the same server timeouts.
type Agent struct {
	cfg   Config
	store *Store
	ready chan struct{}

	// Set by Run before ready is closed, read only after it.
	srv     *Server
	secrets *SecretWatcher
	addr    net.Addr
}

// ErrNoRestConfig is returned by New when Config.RestConfig is nil.
var ErrNoRestConfig = errors.New("nmi: Config.RestConfig is required (the API server NMI watches)")

// New checks cfg (defaults filled, Validate) and builds what needs no context. Run starts it.
func New(cfg Config) (*Agent, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RestConfig == nil {
		return nil, ErrNoRestConfig
	}
	if cfg.ListenAddress == "" {
		return nil, errors.New("nmi: Config.ListenAddress is empty: set the token server's host:port (--nmi-listen-address, --nmi-port)")
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.KubeClient == nil {
		kc, err := kubernetes.NewForConfig(cfg.RestConfig)
		if err != nil {
			return nil, fmt.Errorf("creating the Kubernetes client: %w", err)
		}
		cfg.KubeClient = kc
	}
	return &Agent{cfg: cfg, store: NewStore(), ready: make(chan struct{})}, nil
}

// Run wires NMI and serves until ctx ends: it waits for the watches to sync, starts the Secret
// watcher, the event recorder and the server's background work, listens, and runs Redirect.
// Once ctx ended and Redirect returned it keeps serving for ShutdownGrace, then stops accepting
// and waits for in-flight requests. Run is called once.
func (a *Agent) Run(ctx context.Context) error {
	cfg, log := a.cfg, a.cfg.Log
	if err := Watch(ctx, cfg.RestConfig, cfg, a.store, log.WithName("watch")); err != nil {
		return err
	}
	secrets := NewSecretWatcher(ctx, cfg.KubeClient)
	go secrets.RetainReferenced(ctx, a.store)
	if cfg.Events == nil {
		cfg.Events = NewEventRecorder(ctx, cfg.KubeClient, cfg.NodeName)
	}
	srv := NewServer(cfg, a.store, secrets, cfg.Metrics, log.WithName("server"))
	confirm, err := newConfirmReader(cfg.RestConfig)
	if err != nil {
		return err
	}
	srv.confirmReader = confirm
	go srv.Run(ctx)

	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listening on %s (--nmi-listen-address, --nmi-port): %w", cfg.ListenAddress, err)
	}
	hs := tokenServer(srv, cfg)
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	a.srv, a.secrets, a.addr = srv, secrets, ln.Addr()
	close(a.ready)

	redirect := cfg.Redirect
	if redirect == nil {
		redirect = func(ctx context.Context) error { <-ctx.Done(); return nil }
	}
	redirectErr := make(chan error, 1)
	go func() { redirectErr <- redirect(ctx) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case err := <-redirectErr:
		if err != nil {
			_ = hs.Close()
			return err
		}
	}
	// A Redirect that returns early (nothing to keep) still leaves serving to ctx.
	select {
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	return stopServing(hs, cfg.ShutdownGrace)
}

// Ready is closed once Run serves (watches synced, listener open); Server, Secrets and Addr are
// valid from then on. It stays open when Run fails before.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Store is the agent's node state (valid from New).
func (a *Agent) Store() *Store { return a.store }

// Server is the HTTP data plane (after Ready).
func (a *Agent) Server() *Server { return a.srv }

// Secrets is the watcher of service-principal Secrets (after Ready).
func (a *Agent) Secrets() *SecretWatcher { return a.secrets }

// Addr is the token listener's address (after Ready).
func (a *Agent) Addr() net.Addr { return a.addr }

// Run is New and Agent.Run in one call, for callers that need no handle on the agent.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Token server limits (tokenServer). Writes may follow a wait for an assignment, so the write
// timeout is that budget plus writeSlack.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 16 << 10
	writeSlack        = 30 * time.Second
	stopTimeout       = 10 * time.Second
)

// tokenServer bounds what a slow or hostile pod can hold: headers must arrive within 5 s and stay
// small, a request body within 10 s, and idle keep-alive connections are closed.
func tokenServer(h http.Handler, cfg Config) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: cfg.assignmentWait() + writeSlack, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes}
}

// assignmentWait is the longest a request may wait for its assignment to become Assigned.
func (c *Config) assignmentWait() time.Duration {
	return c.FindIdentityRetryInterval * time.Duration(c.RetryAttemptsForCreated+c.RetryAttemptsForAssigned)
}

// stopServing keeps answering for grace (in-flight and new requests; /readyz already says 503),
// then stops accepting and waits for in-flight requests.
func stopServing(hs *http.Server, grace time.Duration) error {
	time.Sleep(grace)
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("stopping the token server: %w", err)
	}
	return nil
}
