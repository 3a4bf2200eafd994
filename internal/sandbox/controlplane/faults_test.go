package controlplane

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/podidentity/podidentity/internal/testenv"
)

// The chaos harness's control-plane faults: objects survive an apiserver restart (same port,
// same certificates, same client), and a paused etcd is stopped (SIGSTOP) and then runs again.
func TestRestartAPIServerAndPauseEtcd(t *testing.T) {
	bin, err := testenv.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cp, err := Start(ctx, Options{BinDir: bin, Dir: dir, LogDir: dir, StartTimeout: time.Minute, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	kc, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "before-restart"}}
	if _, err := kc.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, old, _ := cp.proc("kube-apiserver")
	if err := cp.RestartAPIServer(ctx, time.Minute); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
	if _, now, _ := cp.proc("kube-apiserver"); now == old {
		t.Error("RestartAPIServer kept the old process")
	}
	if _, err := kc.CoreV1().ConfigMaps("default").Get(ctx, cm.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("after the restart, the same client cannot read what it wrote before: %v", err)
	}

	// While paused, etcd is in the stopped state ("T" in /proc/<pid>/stat); afterwards it runs
	// and serves again.
	_, etcd, _ := cp.proc("etcd")
	state := func() string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", etcd.Cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		return f[0]
	}
	paused := make(chan error, 1)
	go func() { paused <- cp.PauseEtcd(ctx, 2*time.Second) }()
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Second, true, func(context.Context) (bool, error) {
		return state() == "T", nil
	}); err != nil {
		t.Errorf("etcd not stopped during the pause (state %s)", state())
	}
	if err := <-paused; err != nil {
		t.Error(err)
	}
	if s := state(); s == "T" {
		t.Errorf("etcd still stopped after the pause")
	}
	cm2 := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "after-pause"}}
	if _, err := kc.CoreV1().ConfigMaps("default").Create(ctx, cm2, metav1.CreateOptions{}); err != nil {
		t.Errorf("writing after the pause: %v", err)
	}
}
