// Package controlplane runs a real Kubernetes control plane as processes: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler, every one listening on 127.0.0.1
// only, on free ports, with certificates and a service-account key generated per run.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/internal/sandbox/proc"
)

// Options configure the control plane.
type Options struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
	BinDir string
	// Dir receives certificates, data and the kubeconfig; LogDir the process logs.
	Dir, LogDir string
	// ServiceCIDR is the Service ClusterIP range (addresses are only allocated, never routed).
	ServiceCIDR string
	// Progress reports steps to the user; may be nil.
	Progress func(format string, args ...any)
	// StartTimeout bounds how long each component may take to become ready.
	StartTimeout time.Duration
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Kubeconfig is the admin kubeconfig file (server https://127.0.0.1:<APIPort>).
	Kubeconfig string
	// Config is the admin rest config.
	Config *rest.Config
	// APIPort is kube-apiserver's port on 127.0.0.1.
	APIPort int
	// Issuer is the service-account issuer (IssuerURL(APIPort)); its discovery document and
	// JWKS are readable without credentials. CAPEM verifies the apiserver's certificate.
	Issuer string
	CAPEM  []byte

	procs []*proc.Process
}

// avoidPorts are the well-known ports of NMI and MIC; the sandbox relays the apiserver's port
// into node namespaces, where it must not collide with them.
var avoidPorts = map[int]bool{2579: true, 8080: true, 8085: true, 8888: true, 9090: true, 80: true}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	for i := 0; i < 20; i++ {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !avoidPorts[port] {
			return port, nil
		}
	}
	return 0, errors.New("no free port on 127.0.0.1 after 20 tries")
}

// Start starts the four components in order and waits for each to be ready. On error,
// everything started is stopped.
func Start(ctx context.Context, o Options) (_ *ControlPlane, err error) {
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 2 * time.Minute
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "198.19.0.0/16"
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run hack/control-plane.sh (it builds the control plane once): %w", b, o.BinDir, err)
		}
	}
	cp := &ControlPlane{}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	pkiDir := filepath.Join(o.Dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, err
	}
	p, err := newPKI(pkiDir)
	if err != nil {
		return nil, fmt.Errorf("generating control-plane certificates: %w", err)
	}
	ports := make([]int, 5)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	cp.APIPort = apiPort

	start := func(name string, args ...string) (*proc.Process, error) {
		pr, err := proc.Start(proc.Spec{Name: name, Path: filepath.Join(o.BinDir, name), Args: args, LogDir: o.LogDir})
		if err != nil {
			return nil, err
		}
		cp.procs = append(cp.procs, pr)
		return pr, nil
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	httpOK := func(c *http.Client, url string) func(context.Context) error {
		return func(ctx context.Context) error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET %s: %s", url, resp.Status)
			}
			return nil
		}
	}
	wait := func(pr *proc.Process, check func(context.Context) error) error {
		wctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
		defer cancel()
		return pr.WaitReady(wctx, 200*time.Millisecond, check)
	}

	t0 := time.Now()
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	etcd, err := start("etcd",
		"--name=sandbox", "--data-dir="+filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-cluster=sandbox=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--listen-metrics-urls=", "--unsafe-no-fsync", "--quota-backend-bytes=2147483648",
		"--log-level=warn")
	if err != nil {
		return nil, err
	}
	if err := wait(etcd, httpOK(plain, etcdURL+"/health")); err != nil {
		return nil, err
	}
	o.Progress("etcd ready on %s (%s)", etcdURL, time.Since(t0).Round(100*time.Millisecond))

	t0 = time.Now()
	issuer, err := issuerFlags(o.Dir, apiPort)
	if err != nil {
		return nil, err
	}
	cp.Issuer, cp.CAPEM = IssuerURL(apiPort), p.caPEM
	api, err := start("kube-apiserver", append(issuer,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort),
		"--tls-cert-file="+p.Serving, "--tls-private-key-file="+p.ServingKey,
		"--client-ca-file="+p.CA,
		"--service-account-key-file="+p.SAPub, "--service-account-signing-key-file="+p.SAKey,
		"--service-cluster-ip-range="+o.ServiceCIDR,
		// Nothing routes to the apiserver's advertised address from pods, and a single apiserver
		// needs no endpoint lease: keep the kubernetes Service static.
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--profiling=false", "--v=0")...)
	if err != nil {
		return nil, err
	}
	cfg := &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(apiPort),
		TLSClientConfig: rest.TLSClientConfig{CAFile: p.CA, CertFile: p.Admin, KeyFile: p.AdminKey},
		QPS:             200, Burst: 400,
	}
	cp.Config = cfg
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the admin TLS config: %w", err)
	}
	admin := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	if err := wait(api, httpOK(admin, cfg.Host+"/readyz")); err != nil {
		return nil, err
	}
	if err := publishIssuer(ctx, cfg); err != nil {
		return nil, err
	}
	o.Progress("kube-apiserver ready on %s (%s), issuer %s", cfg.Host, time.Since(t0).Round(100*time.Millisecond), cp.Issuer)

	cp.Kubeconfig = filepath.Join(o.Dir, "kubeconfig")
	if err := writeKubeconfig(cp.Kubeconfig, cfg.Host, p); err != nil {
		return nil, err
	}

	t0 = time.Now()
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // local health check of our own process
	kcm, err := start("kube-controller-manager",
		"--kubeconfig="+cp.Kubeconfig,
		"--authentication-kubeconfig="+cp.Kubeconfig, "--authorization-kubeconfig="+cp.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--service-account-private-key-file="+p.SAKey, "--root-ca-file="+p.CA,
		"--cluster-signing-cert-file="+p.CA, "--cluster-signing-key-file="+p.CAKey,
		"--use-service-account-credentials=false", "--leader-elect=false",
		"--controllers=*", "--profiling=false", "--v=0")
	if err != nil {
		return nil, err
	}
	sched, err := start("kube-scheduler",
		"--kubeconfig="+cp.Kubeconfig,
		"--authentication-kubeconfig="+cp.Kubeconfig, "--authorization-kubeconfig="+cp.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--leader-elect=false", "--profiling=false", "--v=0")
	if err != nil {
		return nil, err
	}
	if err := wait(kcm, httpOK(insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort))); err != nil {
		return nil, err
	}
	if err := wait(sched, httpOK(insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort))); err != nil {
		return nil, err
	}
	o.Progress("kube-controller-manager and kube-scheduler ready (%s)", time.Since(t0).Round(100*time.Millisecond))
	return cp, nil
}

func writeKubeconfig(path, server string, p *pki) error {
	c := clientcmdapi.NewConfig()
	c.Clusters["sandbox"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.adminPEM, ClientKeyData: p.akey}
	c.Contexts["sandbox"] = &clientcmdapi.Context{Cluster: "sandbox", AuthInfo: "admin", Namespace: "default"}
	c.CurrentContext = "sandbox"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// Stop stops the components in reverse order.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		_ = cp.procs[i].Stop(10 * time.Second)
	}
	cp.procs = nil
}

func (cp *ControlPlane) proc(name string) (int, *proc.Process, error) {
	for i, p := range cp.procs {
		if p.Spec.Name == name {
			return i, p, nil
		}
	}
	return 0, nil, fmt.Errorf("the control plane has no %s process (stopped?)", name)
}

// PauseEtcd freezes etcd (SIGSTOP) for d and then resumes it (SIGCONT): the apiserver sees a
// store that stalls, as on a slow disk. Not to be called concurrently with Stop.
func (cp *ControlPlane) PauseEtcd(ctx context.Context, d time.Duration) error {
	_, p, err := cp.proc("etcd")
	if err != nil {
		return err
	}
	p.Signal(syscall.SIGSTOP)
	defer p.Signal(syscall.SIGCONT)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// RestartAPIServer stops kube-apiserver (SIGTERM) and starts it again with the same flags, port
// and certificates, returning once /readyz answers 200 (or after timeout). Not to be called
// concurrently with Stop.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context, timeout time.Duration) error {
	i, p, err := cp.proc("kube-apiserver")
	if err != nil {
		return err
	}
	// Open watches can hold a graceful shutdown past the grace: it is then killed, which is a
	// restart too.
	_ = p.Stop(10 * time.Second)
	np, err := proc.Start(p.Spec)
	if err != nil {
		return fmt.Errorf("restarting kube-apiserver: %w", err)
	}
	cp.procs[i] = np
	hc, err := rest.HTTPClientFor(cp.Config)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return np.WaitReady(wctx, 200*time.Millisecond, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cp.Config.Host+"/readyz", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kube-apiserver /readyz after a restart: %s", resp.Status)
		}
		return nil
	})
}
