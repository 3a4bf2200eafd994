package nmi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/internal/testenv"
)

// BenchmarkRSS measures the resident memory of the real cmd/nmi binary, run as a subprocess
// against the envtest API server with 200 assigned pods on its node and 10,000 pods elsewhere in
// the cluster, after every node pod has fetched a token through it. NMI runs with
// --redirect=false and every server on 127.0.0.1, so nothing on this machine's network changes.
func BenchmarkRSS(b *testing.B) {
	const nodePods, clusterPods = 200, 10000
	bin := buildNMI(b)
	cl := &countingListener{}
	h, pods := benchNodeOpts(b, nodePods, harnessOpts{wrapIMDS: func(ln net.Listener) net.Listener { cl.Listener = ln; return cl }})
	createClusterPods(b, clusterPods)

	ports := freePorts(b, 3)
	args := []string{"--node=" + h.node, "--metadata-ip=" + h.srv.cfg.MetadataIP, "--metadata-port=" + strconv.Itoa(h.srv.cfg.MetadataPort),
		"--nmi-listen-address=127.0.0.1", "--nmi-port=" + strconv.Itoa(ports[0]),
		"--http-probe-port=" + strconv.Itoa(ports[1]), "--prometheus-port=" + strconv.Itoa(ports[2]), "--aux-listen-address=127.0.0.1",
		"--redirect=false", "--allow-network-plugin-kubenet", "--pod-rate-limit=0", "--find-identity-retry-interval=1"}
	proc := startNMI(b, bin, args)
	waitReady(b, proc, fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[1]))

	target := fmt.Sprintf("127.0.0.1:%d", ports[0])
	// Warm: every node pod asks for a token from its own IP (two rounds: fetch, then cached).
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, len(pods))
		sem := make(chan struct{}, 8)
		for _, p := range pods {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := tokenFrom(p.Status.PodIP, "http://"+target+tokenPath(armResource)); err != nil {
					errs <- fmt.Errorf("round %d, pod %s (%s): %w", round, p.Name, p.Status.PodIP, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			proc.failf(b, "%v", err)
		}
	}
	rss, hwm := procMemory(b, proc.pid)
	b.Logf("nmi pid %d: VmRSS %.1f MiB, VmHWM %.1f MiB with %d pods on the node, %d more in the cluster; %d IMDS connections opened",
		proc.pid, rss, hwm, nodePods, clusterPods, cl.accepts.Load())
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(hwm, "peak-rss-MiB")
}

// buildNMI compiles cmd/nmi once per run into a temporary directory.
func buildNMI(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "nmi")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/nmi")
	cmd.Dir = testenv.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building cmd/nmi: %v\n%s", err, out)
	}
	return bin
}

// createClusterPods creates n pods on other nodes, with a bounded pool of parallel creates;
// they need no status (NMI's watch is scoped to its node, so they only load the API server and
// must not reach NMI's memory).
func createClusterPods(b *testing.B, n int) {
	ns := env.Namespace(b)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 2000, 2000 // client-side limiter off: the API server is the bound
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := testenv.Context(b)
	jobs := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("c%05d", i),
					Labels: map[string]string{"aadpodidbinding": fmt.Sprintf("sel-%d", i%50)}},
					Spec: corev1.PodSpec{NodeName: fmt.Sprintf("elsewhere-%d", i%100), Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
				if _, err := kc.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					select {
					case errs <- fmt.Errorf("creating cluster pod %d: %w", i, err):
					default:
					}
					return
				}
			}
		}()
	}
	start := time.Now()
	func() {
		defer close(jobs)
		for i := range n {
			select {
			case jobs <- i:
			case err := <-errs:
				b.Fatal(err)
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("created %d cluster pods in %s", n, time.Since(start).Round(time.Millisecond))
}

// freePorts returns n currently free loopback ports.
func freePorts(b *testing.B, n int) []int {
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return out
}

// startNMI runs bin with a kubeconfig for the envtest API server; it is stopped with SIGTERM
// (then killed) when the benchmark ends. Its log goes to a file, printed if it fails.
func startNMI(b *testing.B, bin string, args []string) *nmiProcess {
	dir := b.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(b, kubeconfig, env.Config)
	logPath := filepath.Join(dir, "nmi.log")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "AZURE_ENVIRONMENT_FILEPATH=", "CLOUD=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return &nmiProcess{pid: cmd.Process.Pid, exited: exited, log: logPath}
}

type nmiProcess struct {
	pid    int
	exited <-chan struct{}
	log    string
}

// failf fails the benchmark and shows the end of NMI's log.
func (p *nmiProcess) failf(b *testing.B, format string, args ...any) {
	log, _ := os.ReadFile(p.log)
	b.Fatalf(format+"\nnmi log (last lines):\n%s", append(args, tail(string(log), 40))...)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// writeKubeconfig writes a kubeconfig with the same server and credentials as cfg.
func writeKubeconfig(b *testing.B, path string, cfg *rest.Config) {
	c := clientcmdapi.NewConfig()
	c.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: cfg.CAFile, CertificateAuthorityData: cfg.CAData}
	c.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificate: cfg.CertFile, ClientCertificateData: cfg.CertData,
		ClientKey: cfg.KeyFile, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken, Username: cfg.Username, Password: cfg.Password}
	c.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	c.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		b.Fatalf("writing kubeconfig: %v", err)
	}
}

// waitReady polls NMI's /readyz until 200 (bounded by the test context, not a timed assertion).
func waitReady(b *testing.B, p *nmiProcess, url string) {
	ctx := testenv.Context(b)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-ctx.Done():
			p.failf(b, "nmi never became ready at %s", url)
		case <-p.exited:
			p.failf(b, "nmi exited before it was ready")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tokenFrom asks for a token from a source address; anything but 200 is an error.
func tokenFrom(ip, url string) error {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Metadata", "true")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return nil
}

// procMemory reads VmRSS and VmHWM (peak) of pid in MiB.
func procMemory(b *testing.B, pid int) (rss, hwm float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("reading nmi's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	if rss == 0 {
		b.Fatalf("no VmRSS in /proc/%d/status: is nmi still running?", pid)
	}
	return rss, hwm
}
