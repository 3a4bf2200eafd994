// Package sandbox runs podidentity end to end on one Linux machine: a real Kubernetes control
// plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), the Azure emulator with a
// small AKS-like world, one network namespace per node with the emulator's IMDS on
// 169.254.169.254, a node agent per node that runs pods in their own namespaces, MIC (two replicas
// with leader election) and one NMI per node inside its node's namespace with its real iptables
// rules. cmd/sandbox and the end-to-end tests (test/e2e) both use it. See docs/sandbox.md.
//
// Safety: the machine's own network namespace is never modified. Everything network-facing lives
// in namespaces named podid-sbx-<run>-*; the control plane and the emulator listen on 127.0.0.1
// of the machine and are reached from inside the sandbox through loopback relays (package relay).
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/kubescheme"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox/agent"
	"github.com/podidentity/podidentity/internal/sandbox/controlplane"
	"github.com/podidentity/podidentity/internal/sandbox/netns"
	"github.com/podidentity/podidentity/internal/sandbox/relay"
	"github.com/podidentity/podidentity/internal/sandbox/topology"
)

// Options configure a sandbox.
type Options struct {
	// Timing is the emulator's timing profile: fast, demo or realistic.
	Timing string
	// RepoRoot is the podidentity checkout (go build, config/crd, hack/control-plane.sh).
	RepoRoot string
	// TempRoot is where the run directory is made (default: the system temp dir).
	TempRoot string
	// ControlPlaneDir holds the control-plane binaries (default: from hack/control-plane.sh,
	// which builds them on first use).
	ControlPlaneDir string
	// MICReplicas is how many MIC processes run (leader election picks one); 0 runs no MIC.
	MICReplicas int
	// NMI runs one NMI per node; without it pods reach the emulated IMDS directly.
	NMI bool
	// MICArgs and NMIArgs are extra flags for every MIC / NMI.
	MICArgs, NMIArgs []string
	// ExtraNodes are nodes added after the default world's, each a standalone VM of its own
	// with its own NMI flags. They carry the taint ExtraNodeTaint, so only pods that name them
	// (spec.nodeName) run there: tests of NMI modes (--set-retry-after-header,
	// --block-instance-metadata) get a node without changing what every other test sees.
	ExtraNodes []NodeSpec
	// ProbeArgs are extra flags of the probe client in every container.
	ProbeArgs []string
	// RestartBackoff is the first crash-loop delay of containers (kubelet: 10 s).
	RestartBackoff time.Duration
	// Demo applies the demo identity, binding and Deployment and waits for its tokens.
	Demo bool
	// DemoReplicas is the demo Deployment's size.
	DemoReplicas int
	// FederatedDemo adds the federated demo (FederatedDemoObjects) to Demo.
	FederatedDemo bool
	// KeepFiles keeps the run directory (logs) after stopping.
	KeepFiles bool
	// Verbosity is the -v of MIC and NMI.
	Verbosity int
	// StartTimeout bounds each start step.
	StartTimeout time.Duration

	// World, when set, edits the emulated world before it starts (tests add identities or
	// principals).
	World func(*emulator.Config) `json:"-"`
	// Out receives progress lines (default: discard).
	Out io.Writer `json:"-"`
	// Log receives the components' structured logs (default: discard).
	Log logr.Logger `json:"-"`
}

// AddFlags registers the options.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Timing, "timing", TimingDemo, "Emulated Azure timing: fast (tests), demo (a few seconds per assignment) or realistic (VM 15 s, VMSS 50 s).")
	fs.StringVar(&o.RepoRoot, "repo", ".", "The podidentity checkout (binaries are built from it).")
	fs.StringVar(&o.TempRoot, "temp-dir", os.TempDir(), "Where the run directory (kubeconfig, certificates, logs) is created.")
	fs.StringVar(&o.ControlPlaneDir, "control-plane-dir", "", "Directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (default: built by hack/control-plane.sh).")
	fs.IntVar(&o.MICReplicas, "mic-replicas", 2, "MIC replicas (leader election); 0 runs none.")
	fs.BoolVar(&o.NMI, "nmi", true, "Run NMI on every node; false lets pods reach the emulated IMDS directly.")
	fs.StringSliceVar(&o.MICArgs, "mic-arg", nil, "Extra MIC flag (repeatable), e.g. --mic-arg=--forceNamespaced.")
	fs.StringSliceVar(&o.NMIArgs, "nmi-arg", nil, "Extra NMI flag (repeatable).")
	fs.BoolVar(&o.Demo, "demo", true, "Apply the demo identity, binding and Deployment, wait for their tokens and print a summary.")
	fs.IntVar(&o.DemoReplicas, "demo-replicas", 3, "Pods of the demo Deployment.")
	fs.BoolVar(&o.FederatedDemo, "federated-demo", true, "With --demo, also apply the federated demo: an identity on no VM whose tokens NMI gets by workload identity federation.")
	fs.BoolVar(&o.KeepFiles, "keep-files", false, "Keep the run directory (logs) after stopping.")
	fs.IntVar(&o.Verbosity, "component-v", 2, "Log verbosity (-v) of MIC and NMI; their logs are in the run directory.")
	fs.DurationVar(&o.RestartBackoff, "restart-backoff", 10*time.Second, "First crash-loop back-off of containers (doubles, up to 30x).")
	fs.DurationVar(&o.StartTimeout, "start-timeout", 3*time.Minute, "Longest wait for each start step.")
}

// Validate checks the options.
func (o *Options) Validate() error {
	if _, err := timing(o.Timing); err != nil {
		return err
	}
	if o.MICReplicas < 0 || o.MICReplicas > 5 {
		return fmt.Errorf("--mic-replicas %d: use 0..5", o.MICReplicas)
	}
	if o.Demo && (o.DemoReplicas < 1 || o.DemoReplicas > 50) {
		return fmt.Errorf("--demo-replicas %d: use 1..50", o.DemoReplicas)
	}
	if o.Demo && o.MICReplicas == 0 {
		return errors.New("--demo needs MIC: set --mic-replicas >= 1 or --demo=false")
	}
	if _, err := os.Stat(filepath.Join(o.RepoRoot, "go.mod")); err != nil {
		return fmt.Errorf("--repo %s is not the podidentity checkout (no go.mod): run from the repository or pass --repo", o.RepoRoot)
	}
	seen := map[string]bool{VMName: true}
	for _, e := range o.ExtraNodes {
		if errs := validation.IsDNS1123Label(e.Name); len(errs) > 0 {
			return fmt.Errorf("extra node name %q: %s: use a lower-case DNS label", e.Name, strings.Join(errs, "; "))
		}
		if seen[e.Name] {
			return fmt.Errorf("extra node name %q is used twice (or by the default world): give each node its own name", e.Name)
		}
		seen[e.Name] = true
		if len(e.NMIArgs) > 0 && !o.NMI {
			return fmt.Errorf("extra node %s has NMI flags but NMI is off: set NMI (--nmi) or drop the flags", e.Name)
		}
	}
	if o.StartTimeout <= 0 || o.RestartBackoff <= 0 {
		return errors.New("--start-timeout and --restart-backoff must be positive")
	}
	return nil
}

// NodeSpec is an extra node (Options.ExtraNodes).
type NodeSpec struct {
	// Name is the node's and its VM's name.
	Name string
	// NMIArgs are added, on this node only, after Options.NMIArgs.
	NMIArgs []string
}

// ExtraNodeTaint is the taint key of extra nodes (effect NoSchedule, value the node name).
const ExtraNodeTaint = "sandbox.podidentity.io/extra-node"

// Node is one sandbox node.
type Node struct {
	Name, ProviderID string
	// HostKey names the node's VM or VMSS instance in the emulator.
	HostKey string
	// Extra is set on Options.ExtraNodes, which are tainted ExtraNodeTaint.
	Extra bool
	// NMIArgs are this node's extra NMI flags (Options.ExtraNodes).
	NMIArgs []string
	Net     *topology.Node
	NMI     *Component

	agent *agent.Agent
	life  nodeLife // nodes.go: the agent's run, DeleteNode/ReAddNode
}

// Sandbox is a running sandbox.
type Sandbox struct {
	Opts Options
	// Dir is the run directory; Kubeconfig the admin kubeconfig (usable on the machine and in
	// every sandbox namespace).
	Dir, Kubeconfig string
	// BinDir holds the control-plane binaries (kubectl among them).
	ControlPlaneDir string
	Config          *rest.Config
	Client          kubernetes.Interface
	// Issuer is the apiserver's service-account issuer, whose discovery the emulator's Azure AD
	// fetches (and trusts) for federated exchanges.
	Issuer   string
	Emulator *emulator.Emulator
	Network  *topology.Network
	Nodes    []*Node
	MIC      []*Component
	// Started is when Start began; Ready when it returned.
	Started, Ready time.Time

	prefix string
	runCtx context.Context // what components and agents run under until Close
	cp     *controlplane.ControlPlane
	relays []*relay.Relay
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    logr.Logger
	out    io.Writer
	binDir string

	resMu   sync.Mutex
	results []PodResult
	resCh   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// PodResult is one probe-client outcome seen by a node agent.
type PodResult struct {
	Namespace, Pod, Container, Node string
	PodCreated                      time.Time
	Result                          probeclient.Result
}

func (s *Sandbox) progress(format string, args ...any) {
	fmt.Fprintf(s.out, "[%6.1fs] %s\n", time.Since(s.Started).Seconds(), fmt.Sprintf(format, args...))
}

// Start brings the whole sandbox up. On error everything made so far is removed.
func Start(ctx context.Context, o Options) (_ *Sandbox, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	s := &Sandbox{Opts: o, Started: time.Now(), out: o.Out, log: o.Log, resCh: make(chan struct{})}
	if err := netns.Check(); err != nil {
		return nil, err
	}
	if err := CleanupLeftovers(ctx, o.TempRoot, s.progress); err != nil {
		return nil, fmt.Errorf("removing leftovers of an earlier run: %w", err)
	}
	dir, err := os.MkdirTemp(o.TempRoot, namePrefix)
	if err != nil {
		return nil, fmt.Errorf("creating the run directory in %s: %w", o.TempRoot, err)
	}
	s.Dir = dir
	s.prefix = namePrefix + runID(dir) + "-"
	if err := writeOwner(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	for _, d := range []string{"logs", "bin", "pods"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	s.progress("run directory %s", dir)

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel, s.runCtx = cancel, runCtx

	// The podidentity binaries build while the control plane starts.
	buildDone := make(chan error, 1)
	go func() { buildDone <- s.build(ctx) }()

	if s.ControlPlaneDir, err = s.controlPlaneBinaries(ctx); err != nil {
		return nil, err
	}
	s.cp, err = controlplane.Start(ctx, controlplane.Options{
		BinDir: s.ControlPlaneDir, Dir: dir, LogDir: filepath.Join(dir, "logs"),
		Progress: s.progress, StartTimeout: o.StartTimeout,
	})
	if err != nil {
		return nil, err
	}
	s.Kubeconfig, s.Config, s.Issuer = s.cp.Kubeconfig, s.cp.Config, s.cp.Issuer
	if s.Client, err = kubernetes.NewForConfig(s.Config); err != nil {
		return nil, err
	}
	if _, err := envtest.InstallCRDs(s.Config, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(o.RepoRoot, "config", "crd")}, ErrorIfPathMissing: true,
	}); err != nil {
		return nil, fmt.Errorf("installing the CRDs from config/crd: %w", err)
	}
	s.progress("CRDs installed")

	if err := s.startEmulator(); err != nil {
		return nil, err
	}
	// Federated exchanges fetch the apiserver's issuer discovery over HTTPS, as Azure AD fetches
	// an AKS cluster's.
	if err := s.Emulator.TrustIssuerCA(s.cp.CAPEM); err != nil {
		return nil, fmt.Errorf("trusting the apiserver's CA for its issuer discovery: %w", err)
	}
	if s.Network, err = topology.Build(ctx, s.prefix, len(nodesOf(s.Emulator.Config()))); err != nil {
		return nil, fmt.Errorf("building the sandbox network: %w", err)
	}
	s.progress("network: cluster bridge + %d node namespaces (%s*)", len(s.Network.Nodes), s.prefix)

	select {
	case err := <-buildDone:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := s.startNodes(ctx, runCtx); err != nil {
		return nil, err
	}
	if err := s.startMIC(ctx, runCtx); err != nil {
		return nil, err
	}
	if err := s.startNMI(ctx, runCtx); err != nil {
		return nil, err
	}
	s.Ready = time.Now()
	s.progress("sandbox ready")
	return s, nil
}

// controlPlaneBinaries finds (or, on first use, builds) the control-plane binaries.
func (s *Sandbox) controlPlaneBinaries(ctx context.Context) (string, error) {
	if s.Opts.ControlPlaneDir != "" {
		return s.Opts.ControlPlaneDir, nil
	}
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "kube-controller-manager")); err == nil {
			return d, nil
		}
	}
	script := filepath.Join(s.Opts.RepoRoot, "hack", "control-plane.sh")
	if out, err := exec.CommandContext(ctx, script, "--print-if-built").Output(); err == nil && len(out) > 0 {
		return strings.TrimSpace(string(out)), nil
	}
	s.progress("control-plane binaries not built yet: building them once with hack/control-plane.sh (about 5-10 minutes on 2 cores)")
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = prefixWriter{w: s.out, prefix: "         "}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building the control plane with %s: %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}

type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Fprint(p.w, p.prefix+line)
		}
	}
	return len(b), nil
}

// build compiles the probe client, MIC and NMI into the run directory.
func (s *Sandbox) build(ctx context.Context) error {
	t0 := time.Now()
	pkgs := []string{"./cmd/probe-client"}
	if s.Opts.MICReplicas > 0 {
		pkgs = append(pkgs, "./cmd/mic")
	}
	if s.Opts.NMI {
		pkgs = append(pkgs, "./cmd/nmi")
	}
	args := append([]string{"build", "-o", filepath.Join(s.Dir, "bin") + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = s.Opts.RepoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	s.binDir = filepath.Join(s.Dir, "bin")
	s.progress("built %s (%s)", strings.Join(pkgs, " "), time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func (s *Sandbox) startEmulator() error {
	cfg, err := World(s.Opts.Timing)
	if err != nil {
		return err
	}
	if err := addFederatedDemo(&cfg, s.Issuer); err != nil {
		return err
	}
	if s.Opts.World != nil {
		s.Opts.World(&cfg)
	}
	// Appended last, so the default nodes keep their order (and indexes) in s.Nodes.
	for _, e := range s.Opts.ExtraNodes {
		cfg.VirtualMachines = append(cfg.VirtualMachines, emulator.VMConfig{Name: e.Name})
	}
	for _, addr := range []*string{&cfg.ARMAddr, &cfg.AADAddr, &cfg.AdminAddr} {
		port, err := controlplane.FreePort()
		if err != nil {
			return err
		}
		*addr = "127.0.0.1:" + strconv.Itoa(port)
	}
	cfg.Logger = s.log.WithName("emulator")
	if s.Emulator, err = emulator.New(cfg); err != nil {
		return fmt.Errorf("building the emulated Azure world: %w", err)
	}
	if err := s.Emulator.Start(); err != nil {
		return fmt.Errorf("starting the Azure emulator: %w", err)
	}
	if err := s.Emulator.WriteCA(filepath.Join(s.Dir, "emulator-ca.pem")); err != nil {
		return err
	}
	c := s.Emulator.Config()
	s.progress("Azure emulator: ARM %s, AAD %s, admin %s (%d VMSS instances, %d VM, %d identities, timing %s)",
		s.Emulator.ARMURL(), s.Emulator.AADURL(), s.Emulator.AdminURL(),
		countInstances(c), len(c.VirtualMachines), len(c.UserAssignedIdentities), s.Opts.Timing)
	return nil
}

func countInstances(c emulator.Config) int {
	n := 0
	for _, ss := range c.VirtualMachineScaleSets {
		n += ss.Instances
	}
	return n
}

// ports relayed into sandbox namespaces: the apiserver, ARM and AAD.
func (s *Sandbox) relayPorts() []int {
	var ports []int
	ports = append(ports, s.cp.APIPort)
	for _, u := range []string{s.Emulator.ARMURL(), s.Emulator.AADURL()} {
		if i := strings.LastIndexByte(u, ':'); i >= 0 {
			if p, err := strconv.Atoi(strings.TrimRight(u[i+1:], "/")); err == nil {
				ports = append(ports, p)
			}
		}
	}
	return ports
}

func (s *Sandbox) startNodes(ctx, runCtx context.Context) error {
	specs := nodesOf(s.Emulator.Config())
	probeArgs := append([]string{}, s.Opts.ProbeArgs...)
	for i, spec := range specs {
		nn := s.Network.Nodes[i]
		n := &Node{Name: spec.Name, ProviderID: spec.ProviderID, HostKey: spec.HostKey, Net: nn}
		var taints []corev1.Taint
		for _, e := range s.Opts.ExtraNodes {
			if e.Name == spec.Name {
				n.Extra, n.NMIArgs = true, e.NMIArgs
				taints = append(taints, corev1.Taint{Key: ExtraNodeTaint, Value: e.Name, Effect: corev1.TaintEffectNoSchedule})
			}
		}
		s.Nodes = append(s.Nodes, n)
		// The node's own IMDS, on 169.254.169.254:80 inside its namespace only.
		ln, err := netns.Listen(nn.NS, topology.MetadataIP+":80")
		if err != nil {
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.Emulator.ServeIMDS(spec.HostKey, ln); err != nil && runCtx.Err() == nil {
				s.log.Error(err, "IMDS stopped", "node", spec.Name)
			}
		}()
		go func() { <-runCtx.Done(); ln.Close() }()
		r, err := relay.Start(s.log, nn.NS, s.relayPorts()...)
		if err != nil {
			return err
		}
		s.relays = append(s.relays, r)
		a, err := agent.New(agent.Config{
			Client: s.Client, Log: s.log.WithName("agent"), NodeName: spec.Name, ProviderID: spec.ProviderID,
			Labels: map[string]string{
				"agentpool":                        spec.Pool,
				"topology.kubernetes.io/region":    s.Emulator.Config().Location,
				"node.kubernetes.io/instance-type": "Standard_DS2_v2",
			},
			Taints: taints,
			Net:    nn, PodNSPrefix: s.prefix + "n" + strconv.Itoa(i), ProbeClient: filepath.Join(s.binDir, "probe-client"),
			ProbeArgs: probeArgs, Dir: s.Dir, RestartBase: s.Opts.RestartBackoff, OnResult: s.onResult,
		})
		if err != nil {
			return err
		}
		if err := a.Register(ctx); err != nil {
			return err
		}
		n.agent = a
		s.runAgent(runCtx, n)
	}
	s.progress("%d nodes registered and Ready (node agents running; IMDS on %s inside each node)", len(specs), topology.MetadataIP)
	return nil
}

func (s *Sandbox) onResult(pod *corev1.Pod, container string, r probeclient.Result) {
	s.resMu.Lock()
	s.results = append(s.results, PodResult{Namespace: pod.Namespace, Pod: pod.Name, Container: container,
		Node: pod.Spec.NodeName, PodCreated: pod.CreationTimestamp.Time, Result: r})
	close(s.resCh)
	s.resCh = make(chan struct{})
	s.resMu.Unlock()
}

// Results returns every probe-client result so far and a channel closed at the next one.
func (s *Sandbox) Results() ([]PodResult, <-chan struct{}) {
	s.resMu.Lock()
	defer s.resMu.Unlock()
	return append([]PodResult(nil), s.results...), s.resCh
}

// Kubectl is the path of kubectl.
func (s *Sandbox) Kubectl() string { return filepath.Join(s.ControlPlaneDir, "kubectl") }

// Close stops everything and removes every namespace and file the sandbox made.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sandbox) close() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if s.cancel != nil {
		s.cancel() // node agents stop their pods; IMDS listeners close
	}
	var wg sync.WaitGroup
	for _, n := range s.Nodes {
		if n.NMI != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.NMI.Stop() }()
		}
	}
	for _, m := range s.MIC {
		wg.Add(1)
		go func() { defer wg.Done(); m.Stop() }()
	}
	wg.Wait()
	s.wg.Wait()
	for _, r := range s.relays {
		r.Close()
	}
	if s.Emulator != nil {
		if err := s.Emulator.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.cp != nil {
		s.cp.Stop()
	}
	if s.prefix != "" {
		if err := topology.RemoveAll(ctx, s.prefix); err != nil {
			errs = append(errs, err)
		}
		if left, _ := netns.List(s.prefix); len(left) > 0 {
			errs = append(errs, fmt.Errorf("network namespaces left after stopping: %v: remove them with `ip netns delete`", left))
		}
	}
	if s.Dir != "" {
		if s.Opts.KeepFiles {
			// Renamed out of the podid-sbx-* pattern, so the next run does not clean it up.
			kept := filepath.Join(filepath.Dir(s.Dir), "podid-sandbox-logs-"+runID(s.Dir))
			_ = os.Remove(filepath.Join(s.Dir, ownerFile))
			if err := os.Rename(s.Dir, kept); err != nil {
				errs = append(errs, fmt.Errorf("keeping the run directory: %w", err))
			} else {
				fmt.Fprintf(s.out, "kept the run directory as %s (logs)\n", kept)
			}
		} else if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", s.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// CRClient returns a controller-runtime client that knows core and podidentity kinds.
func (s *Sandbox) CRClient() (client.Client, error) {
	return client.New(s.Config, client.Options{Scheme: kubescheme.New()})
}
