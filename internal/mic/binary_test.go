package mic_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/testenv"
)

// buildMIC builds cmd/mic into the world's directory and returns the binary's path.
func (w *world) buildMIC(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(w.dir, "mic")
	build := exec.Command("go", "build", "-o", bin, "./cmd/mic")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building cmd/mic: %v\n%s", err, out)
	}
	return bin
}

// startMICBinary runs a cmd/mic built by buildMIC as an operator would, against this world's
// apiserver (a kubeconfig written from env.Config) and emulator (azure.json +
// AZURE_ENVIRONMENT_FILEPATH), probes and metrics on free loopback ports. It returns once the
// binary holds the leader lease, and stops it (SIGTERM, by PID) when the benchmark ends.
func (w *world) startMICBinary(b *testing.B, bin string) micProcess {
	b.Helper()
	w.settings(nil) // writes azure.json, cloud.json and ca.pem into w.dir
	kubeconfig := filepath.Join(w.dir, "kubeconfig")
	rc := w.rest
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		b.Fatalf("writing the kubeconfig: %v", err)
	}
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	}
	logf, err := os.Create(filepath.Join(w.dir, "mic.log"))
	if err != nil {
		b.Fatal(err)
	}
	metricsPort := port()
	args := []string{"--kubeconfig", kubeconfig, "--cloudconfig", filepath.Join(w.dir, "azure.json"),
		"--bind-host", "127.0.0.1", "--http-probe-port", port(), "--prometheus-port", metricsPort,
		"--leader-election-namespace", w.ns, "--leader-election-name", "mic-binary"}
	cmd := exec.Command(bin, append(args, strings.Fields(*micArgs)...)...)
	cmd.Env = append(os.Environ(), "MIC_POD_NAMESPACE="+w.ns, "AZURE_ENVIRONMENT_FILEPATH="+filepath.Join(w.dir, "cloud.json"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting cmd/mic: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logf.Close()
		if *micLog != "" {
			if raw, err := os.ReadFile(logf.Name()); err == nil {
				_ = os.WriteFile(*micLog, raw, 0o644)
			}
		}
	})
	lease := &coordinationv1.Lease{}
	eventually(b, "cmd/mic holding the leader lease", func() (bool, string) {
		select {
		case err := <-exited:
			exited <- err
			log, _ := os.ReadFile(logf.Name())
			b.Fatalf("cmd/mic exited: %v\n%s", err, log)
		default:
		}
		if err := w.cl.Get(testenv.Context(b), client.ObjectKey{Namespace: w.ns, Name: "mic-binary"}, lease); err != nil {
			return false, err.Error()
		}
		h := lease.Spec.HolderIdentity
		return h != nil && strings.TrimSpace(*h) != "", "no holder"
	})
	return micProcess{pid: cmd.Process.Pid, metrics: "http://127.0.0.1:" + metricsPort + "/metrics"}
}

// micProcess is a running cmd/mic.
type micProcess struct {
	pid     int
	metrics string // its Prometheus endpoint
}

// gauge reads one unlabelled gauge from the process's /metrics.
func (p micProcess) gauge(b *testing.B, name string) float64 {
	resp, err := http.Get(p.metrics)
	if err != nil {
		b.Fatalf("reading MIC's metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatalf("reading MIC's metrics: %v", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatalf("metric %s: %v", l, err)
			}
			return v
		}
	}
	b.Fatalf("MIC's metrics have no %s", name)
	return 0
}
