package chart_test

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/flagsdoc"
)

// nmi.prepareNode renders the privileged init container `nmi --prepare-node` (same image, same
// host-network pod, the iptables lock mounted) only when set, and leaves NMI's own container,
// its securityContext above all, exactly as without it. The "everything" scenario sets it, so
// TestApply also has the apiserver accept the privileged init container.
func TestPrepareNodeInitContainer(t *testing.T) {
	nmiPod := func(vals map[string]any) *appsv1.DaemonSet {
		t.Helper()
		return decode[appsv1.DaemonSet](t, find(render(t, "podidentity", "podidentity", vals), "DaemonSet", "-nmi"))
	}
	base := nmiPod(nil)
	if n := len(base.Spec.Template.Spec.InitContainers); n != 0 {
		t.Fatalf("default values render %d init containers, want none", n)
	}
	if n := len(nmiPod(map[string]any{"nmi": map[string]any{"prepareNode": "false"}}).Spec.Template.Spec.InitContainers); n != 0 {
		t.Errorf("nmi.prepareNode=\"false\" renders %d init containers, want none", n)
	}
	s, err := flagsdoc.Read(chartrender.RepoRoot(), nmiComponent(t))
	if err != nil {
		t.Fatal(err)
	}
	known, _ := s.Known()
	for _, v := range []any{true, "true"} {
		d := nmiPod(map[string]any{"nmi": map[string]any{"prepareNode": v}})
		ps := d.Spec.Template.Spec
		if len(ps.InitContainers) != 1 {
			t.Fatalf("nmi.prepareNode=%v renders %d init containers, want 1", v, len(ps.InitContainers))
		}
		ic, nc := ps.InitContainers[0], ps.Containers[0]
		if ic.Image != nc.Image || !slices.Equal(ic.Args, []string{"--prepare-node"}) || !known["prepare-node"] {
			t.Errorf("init container runs %s %q, want NMI's image %s with --prepare-node (a flag NMI has: %v)", ic.Image, ic.Args, nc.Image, known["prepare-node"])
		}
		if sc := ic.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("init container securityContext %+v, want privileged (to write /proc/sys)", sc)
		}
		if !ps.HostNetwork {
			t.Errorf("the NMI pod with the init container is not on the host network: the sysctl and guard would miss the node")
		}
		if !slices.ContainsFunc(ic.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/run/xtables.lock" }) {
			t.Errorf("init container does not mount the iptables lock: %+v", ic.VolumeMounts)
		}
		if want := base.Spec.Template.Spec.Containers[0]; !equality.Semantic.DeepEqual(nc, want) {
			t.Errorf("nmi.prepareNode changed NMI's own container:\n got %+v\nwant %+v", nc.SecurityContext, want.SecurityContext)
		}
	}
}

func nmiComponent(t *testing.T) flagsdoc.Component {
	t.Helper()
	for _, c := range flagsdoc.Components {
		if c.Name == "nmi" {
			return c
		}
	}
	t.Fatal("flagsdoc has no nmi component")
	return flagsdoc.Component{}
}
