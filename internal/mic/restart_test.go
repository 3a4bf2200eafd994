package mic_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// dedicatedControlPlane starts an etcd + kube-apiserver of this test's own, so that stopping the
// apiserver cannot disturb the package's shared one. The apiserver's certificate directory is
// fixed (not a random one envtest deletes on Stop) so that a restarted apiserver keeps its
// serving certificate, client CA and port, and the rest.Config MIC holds stays valid — as with a
// real apiserver restarting.
func dedicatedControlPlane(t *testing.T) (*envtest.Environment, *rest.Config, client.Client) {
	t.Helper()
	assets, err := testenv.AssetsDir()
	if err != nil {
		t.Fatalf("control-plane binaries: %v (run with KUBEBUILDER_ASSETS=$(hack/control-plane.sh))", err)
	}
	te := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(testenv.RepoRoot(), "config", "crd")},
		ErrorIfCRDPathMissing: true,
		Scheme:                testenv.NewScheme(),
	}
	te.ControlPlane.GetAPIServer().CertDir = t.TempDir()
	rc, err := te.Start()
	if err != nil {
		t.Fatalf("starting a dedicated control plane: %v", err)
	}
	t.Cleanup(func() { _ = te.Stop() })
	cl, err := client.New(rc, client.Options{Scheme: testenv.NewScheme()})
	if err != nil {
		t.Fatalf("client for the dedicated control plane: %v", err)
	}
	return te, rc, cl
}

// The kube-apiserver goes away while MIC is assigning (its PATCH is in flight) and comes back on
// the same etcd and port. MIC must not exit: it loses the lease, stands by, is elected again, and
// finishes — the pods from before the outage and those created after it all end Assigned, with
// no extra PATCHes beyond one per identity.
func TestAPIServerRestartedMidAssignment(t *testing.T) {
	te, rc, cl := dedicatedControlPlane(t)
	ns := "restart"
	if err := cl.Create(testenv.Context(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	w := newWorldOn(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}, {Name: "two"}},
		// Long enough that the apiserver is stopped while the first PATCH runs.
		Timing: emulator.Timing{VMSSOperation: emulator.D(2 * time.Second)}}, rc, cl, ns)
	p := w.startMIC(micOpts{lease: 2 * time.Second})
	w.identity("one")
	w.binding("b1", "one", "s1")
	n0, n1 := w.vmssNode("pool", 0), w.vmssNode("pool", 1)
	w.pod("p0", n0, "s1")
	eventually(t, "MIC's first PATCH", func() (bool, string) {
		n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate})
		return n >= 1, fmt.Sprint(n)
	})
	// Created just before the outage: MIC may or may not have seen it.
	w.pod("p1", n1, "s1")

	api := te.ControlPlane.GetAPIServer()
	if err := api.Stop(); err != nil {
		t.Fatalf("stopping the apiserver: %v", err)
	}
	// Stay down longer than the lease, so MIC's leadership lapses (the hard case), and past the
	// end of the PATCH, whose status writes then fail.
	time.Sleep(3 * time.Second)
	if err := api.Start(); err != nil {
		t.Fatalf("starting the apiserver again: %v", err)
	}
	if done, err := p.exited(); done {
		t.Fatalf("MIC exited during the apiserver outage: %v", err)
	}

	w.identity("two")
	w.binding("b2", "two", "s2")
	w.pod("p2", n0, "s1")
	w.pod("p3", n1, "s2")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p0", "one"): assigned, w.aaiName("p1", "one"): assigned,
		w.aaiName("p2", "one"): assigned, w.aaiName("p3", "two"): assigned})
	w.waitAssigned("pool", "one", "two")
	if done, err := p.exited(); done {
		t.Fatalf("MIC exited after the apiserver came back: %v", err)
	}
	// One PATCH adds "one" (before the outage), one adds "two"; the re-elected MIC re-reads the
	// VMSS and finds "one" there instead of sending it again.
	patches := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate})
	if patches != 2 {
		t.Fatalf("VMSS PATCHes = %d, want 2 (one per identity; the outage must not cause re-sends)", patches)
	}
}
