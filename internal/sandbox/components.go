package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox/netns"
	"github.com/podidentity/podidentity/internal/sandbox/proc"
	"github.com/podidentity/podidentity/internal/sandbox/relay"
)

// Ports MIC and NMI use inside their namespaces (the Helm chart's values).
const (
	MICProbePort   = 8080
	MICMetricsPort = 8888
	NMIProbePort   = 8085
	NMIPort        = 2579
	NMIMetricsPort = 9090
	// MICNamespace is the Helm release namespace MIC "runs" in: its leader Lease and ownership
	// records live there.
	MICNamespace = "podidentity"
)

// Component is a supervised MIC or NMI process: restarted when it exits, as its Deployment or
// DaemonSet would restart it.
type Component struct {
	Name string
	// NS is the network namespace it runs in.
	NS string

	spec proc.Spec
	s    *Sandbox

	mu       sync.Mutex
	cur      *proc.Process
	restarts int
	stopping bool
	done     chan struct{}
}

func (s *Sandbox) startComponent(runCtx context.Context, spec proc.Spec) (*Component, error) {
	c := &Component{Name: spec.Name, NS: spec.NetNS, spec: spec, s: s, done: make(chan struct{})}
	p, err := proc.Start(spec)
	if err != nil {
		return nil, err
	}
	c.cur = p
	go c.supervise(runCtx)
	return c, nil
}

func (c *Component) supervise(ctx context.Context) {
	defer close(c.done)
	for {
		c.mu.Lock()
		p := c.cur
		c.mu.Unlock()
		select {
		case <-p.Done():
		case <-ctx.Done():
			return
		}
		c.mu.Lock()
		stopping := c.stopping
		c.mu.Unlock()
		if stopping || ctx.Err() != nil {
			return
		}
		c.s.progress("%s exited (%v); restarting it in 2s, as its controller would. Last log lines:\n%s", c.Name, p.Err(), p.Tail(5))
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
		np, err := proc.Start(c.spec)
		if err != nil {
			c.s.progress("restarting %s failed: %v", c.Name, err)
			return
		}
		c.mu.Lock()
		c.cur, c.restarts = np, c.restarts+1
		c.mu.Unlock()
	}
}

// Process is the current process.
func (c *Component) Process() *proc.Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// Restarts counts restarts after exits.
func (c *Component) Restarts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts
}

// Kill SIGKILLs the current process (as deleting its pod would, without grace); the supervisor
// starts a new one.
func (c *Component) Kill() { c.Process().Signal(syscall.SIGKILL) }

// Terminate sends SIGTERM (a graceful stop, as a rolling update does); unlike Stop, the
// supervisor starts a new process after it exits.
func (c *Component) Terminate() { c.Process().Signal(syscall.SIGTERM) }

// Stop stops the process with SIGTERM (NMI keeps its iptables rules, as on a rolling update:
// its DaemonSet is not being deleted) and ends supervision.
func (c *Component) Stop() {
	c.mu.Lock()
	c.stopping = true
	p := c.cur
	c.mu.Unlock()
	if err := p.Stop(15 * time.Second); err != nil {
		c.s.progress("%v", err)
	}
}

// Log is the component's log file.
func (c *Component) Log() string { return c.spec.LogDir + "/" + c.spec.Name + ".log" }

// Get sends GET http://127.0.0.1:<port><path> from inside the component's namespace.
func (c *Component) Get(ctx context.Context, port int, path string) (int, string, error) {
	return getIn(ctx, c.NS, fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
}

func getIn(ctx context.Context, ns, url string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: netns.Dialer(ns), DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), nil
}

func (c *Component) waitHTTP(ctx context.Context, timeout time.Duration, port int, path string) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.Process().WaitReady(wctx, 250*time.Millisecond, func(ctx context.Context) error {
		code, body, err := c.Get(ctx, port, path)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", path, code, body)
		}
		return nil
	})
}

// writeCloudConfig writes MIC's azure.json and the custom-cloud environment file pointing at the
// emulator (the upstream AZURE_ENVIRONMENT_FILEPATH mechanism), and returns their paths.
func (s *Sandbox) writeCloudConfig() (azureJSON, envFile string, err error) {
	c := s.Emulator.Config()
	azureJSON = filepath.Join(s.Dir, "azure.json")
	envFile = filepath.Join(s.Dir, "azurestackcloud.json")
	write := func(path string, v any) error {
		b, _ := json.MarshalIndent(v, "", "  ")
		return os.WriteFile(path, b, 0o600)
	}
	if err := write(azureJSON, map[string]any{
		"cloud": "AzureStackCloud", "tenantId": c.TenantID, "subscriptionId": c.SubscriptionID,
		"aadClientId": MICAppID, "aadClientSecret": MICSecret, "resourceGroup": c.ResourceGroup,
		"vmType": "vmss", "location": c.Location,
	}); err != nil {
		return "", "", err
	}
	if err := write(envFile, map[string]any{
		"name": "AzureStackCloud", "resourceManagerEndpoint": s.Emulator.ARMURL() + "/",
		"activeDirectoryEndpoint": s.Emulator.AADURL() + "/", "tokenAudience": emulator.ARMAudience,
		"caBundle": filepath.Join(s.Dir, "emulator-ca.pem"),
	}); err != nil {
		return "", "", err
	}
	return azureJSON, envFile, nil
}

// startMIC runs the MIC replicas, each in its own namespace (as each replica is a pod with its
// own network), reaching the apiserver and ARM/AAD through relays.
func (s *Sandbox) startMIC(ctx, runCtx context.Context) error {
	if s.Opts.MICReplicas == 0 {
		return nil
	}
	azureJSON, envFile, err := s.writeCloudConfig()
	if err != nil {
		return err
	}
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MICNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", MICNamespace, err)
	}
	t0 := time.Now()
	for i := 0; i < s.Opts.MICReplicas; i++ {
		ns := s.prefix + "mic" + strconv.Itoa(i)
		if err := netns.Add(ctx, ns); err != nil {
			return err
		}
		r, err := relay.Start(s.log, ns, s.relayPorts()...)
		if err != nil {
			return err
		}
		s.relays = append(s.relays, r)
		args := []string{
			"--kubeconfig=" + s.Kubeconfig, "--cloudconfig=" + azureJSON,
			"--leader-election-instance=mic-" + strconv.Itoa(i),
			"--leader-election-namespace=" + MICNamespace, "--leader-election-name=aad-pod-identity-mic",
			"--http-probe-port=" + strconv.Itoa(MICProbePort), "--prometheus-port=" + strconv.Itoa(MICMetricsPort),
			"-v=" + strconv.Itoa(s.Opts.Verbosity),
		}
		c, err := s.startComponent(runCtx, proc.Spec{
			Name: "mic-" + strconv.Itoa(i), Path: filepath.Join(s.binDir, "mic"), NetNS: ns,
			Args: append(args, s.Opts.MICArgs...), LogDir: filepath.Join(s.Dir, "logs"),
			Env: []string{"MIC_POD_NAMESPACE=" + MICNamespace, "AZURE_ENVIRONMENT_FILEPATH=" + envFile},
		})
		if err != nil {
			return err
		}
		s.MIC = append(s.MIC, c)
	}
	for _, c := range s.MIC {
		if err := c.waitHTTP(ctx, s.Opts.StartTimeout, MICProbePort, "/healthz"); err != nil {
			return fmt.Errorf("MIC did not become healthy: %w", err)
		}
	}
	s.progress("MIC: %d replicas running, leader election on Lease %s/aad-pod-identity-mic (%s)", len(s.MIC), MICNamespace, time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// startNMI runs one NMI per node inside the node's namespace, where it installs its iptables
// rules and talks to that node's IMDS.
func (s *Sandbox) startNMI(ctx, runCtx context.Context) error {
	if !s.Opts.NMI {
		return nil
	}
	_, envFile, err := s.writeCloudConfig()
	if err != nil {
		return err
	}
	// No kubelet and no CNI configuration exist here; NMI's kubenet check reads these (empty)
	// stand-ins instead of whatever the machine has. (The sandbox's per-node bridge is
	// kubenet-like, but its pods are the project's own probe clients.)
	kubeletDefaults := filepath.Join(s.Dir, "kubelet-defaults")
	cniDir := filepath.Join(s.Dir, "cni-net.d")
	if err := os.WriteFile(kubeletDefaults, nil, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(cniDir, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	pods, err := s.nmiPods(ctx)
	if err != nil {
		return err
	}
	for i, n := range s.Nodes {
		// The chart's arguments, plus the kubeconfig (through $KUBECONFIG, as NMI reads it).
		args := []string{
			"--node=" + n.Name,
			"--http-probe-port=" + strconv.Itoa(NMIProbePort), "--prometheus-port=" + strconv.Itoa(NMIMetricsPort),
			"--MICNamespace=" + MICNamespace, "--kubelet-config=" + kubeletDefaults, "--cni-conf-dir=" + cniDir,
			"--nmi-port=" + strconv.Itoa(NMIPort), "--metadata-ip=169.254.169.254", "--metadata-port=80",
			"-v=" + strconv.Itoa(s.Opts.Verbosity),
		}
		c, err := s.startComponent(runCtx, proc.Spec{
			Name: "nmi-" + strconv.Itoa(i), Path: filepath.Join(s.binDir, "nmi"), NetNS: n.Net.NS,
			Args: append(append(args, s.Opts.NMIArgs...), n.NMIArgs...), LogDir: filepath.Join(s.Dir, "logs"),
			Env: append([]string{
				"NODE_NAME=" + n.Name, "KUBECONFIG=" + s.Kubeconfig,
				// Custom-cloud endpoints as MIC reads them; NMI takes service principals' Azure AD
				// from each identity's adEndpoint, and trusts the emulator's CA through Go's
				// SSL_CERT_FILE (the sandbox has no other destination).
				"AZURE_ENVIRONMENT_FILEPATH=" + envFile, "SSL_CERT_FILE=" + filepath.Join(s.Dir, "emulator-ca.pem"),
			}, podEnv(pods[n.Name])...),
		})
		if err != nil {
			return err
		}
		n.NMI = c
	}
	for _, n := range s.Nodes {
		if err := n.NMI.waitHTTP(ctx, s.Opts.StartTimeout, NMIProbePort, "/readyz"); err != nil {
			return fmt.Errorf("NMI on %s did not become ready: %w", n.Name, err)
		}
	}
	s.progress("NMI: running on %d nodes, iptables DNAT %s:80 -> 127.0.0.1:%d inside each node (%s)", len(s.Nodes), "169.254.169.254", NMIPort, time.Since(t0).Round(100*time.Millisecond))
	return nil
}
