package sandbox

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podidentity/podidentity/internal/sandbox/netns"
)

// A node deleted and added again: the Node object goes and comes back, its NMI stops and is
// ready again, and a pod bound to it (still there: PodGC waits 40 s) runs again on the new agent.
func TestDeleteNodeAndReAddNode(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("needs what the sandbox needs: %v", err)
	}
	if testing.Short() {
		t.Skip("starts a sandbox")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	repo, _ := filepath.Abs("../..")
	sb, err := Start(ctx, Options{Timing: TimingFast, RepoRoot: repo, TempRoot: os.TempDir(), NMI: true,
		RestartBackoff: time.Second, StartTimeout: 3 * time.Minute, ProbeArgs: []string{"--period=1s"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	n := sb.Nodes[0]
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "on-" + n.Name},
		Spec: corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "app", Image: "probe"}}}}
	if _, err := sb.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	resultsSince := func(t0 time.Time) int {
		all, _ := sb.Results()
		c := 0
		for _, r := range all {
			if r.Pod == pod.Name {
				if at, err := time.Parse(time.RFC3339Nano, r.Result.Time); err == nil && at.After(t0) {
					c++
				}
			}
		}
		return c
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
	waitFor("the pod's first results", func() bool { return resultsSince(time.Time{}) > 0 })

	if err := sb.DeleteNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if _, err := sb.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node %s after DeleteNode: %v, want NotFound", n.Name, err)
	}
	if !sb.NodeDown(n.Name) {
		t.Error("NodeDown is false after DeleteNode")
	}
	if code, _, err := n.NMI.Get(ctx, NMIProbePort, "/readyz"); err == nil {
		t.Errorf("NMI on the deleted node still answers (%d)", code)
	}
	if err := sb.DeleteNode(ctx, n.Name); !errors.Is(err, ErrNodeState) {
		t.Errorf("second DeleteNode: %v, want ErrNodeState", err)
	}
	time.Sleep(2 * time.Second)
	if c := resultsSince(deleted.Add(time.Second)); c != 0 {
		t.Errorf("%d results from the pod while its node was deleted", c)
	}
	if _, err := sb.Client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the pod went before PodGC's quarantine: %v", err)
	}

	if err := sb.ReAddNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	readded := time.Now()
	if _, err := sb.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil || sb.NodeDown(n.Name) {
		t.Errorf("node after ReAddNode: %v (down %t)", err, sb.NodeDown(n.Name))
	}
	if code, _, err := n.NMI.Get(ctx, NMIProbePort, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("NMI after ReAddNode: %d %v", code, err)
	}
	waitFor("the pod's results on the re-added node", func() bool { return resultsSince(readded) > 0 })
	if err := sb.ReAddNode(ctx, n.Name); !errors.Is(err, ErrNodeState) {
		t.Errorf("ReAddNode of a running node: %v, want ErrNodeState", err)
	}
}
