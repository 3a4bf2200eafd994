package desired

import (
	"fmt"
	"testing"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
)

// BenchmarkCompute20kPods is the shape: 20,000 pods, 100 identities and bindings, 30 nodes
// in 3 VM scale sets. Goal: ≤ 50 ms per Compute.
func BenchmarkCompute20kPods(b *testing.B) {
	in := benchInput()
	b.ReportAllocs()
	var st *State
	for b.Loop() {
		st = Compute(in)
	}
	if len(st.AAIs) != 20000 || len(st.Groups) != 3 {
		b.Fatalf("got %d AAIs in %d groups, want 20000 in 3", len(st.AAIs), len(st.Groups))
	}
}

// BenchmarkDiff20kConverged diffs the same shape against a fully converged cluster, the other
// half of every batch.
func BenchmarkDiff20kConverged(b *testing.B) {
	st := Compute(benchInput())
	have := make([]*aadv1.AzureAssignedIdentity, 0, len(st.AAIs))
	want := make([]*AAI, 0, len(st.AAIs))
	for _, a := range st.AAIs {
		have = append(have, a.Object(aadv1.AssignedIDAssigned))
		want = append(want, a)
	}
	b.ReportAllocs()
	for b.Loop() {
		if c := Diff(want, have); !c.Empty() {
			b.Fatal("converged state must diff empty")
		}
	}
}

func benchInput() Input {
	in := Input{Nodes: map[string]Node{}}
	for i := 0; i < 30; i++ {
		n := fmt.Sprintf("node-%d", i)
		in.Nodes[n] = Node{Name: n, Resource: cloud.Resource{Kind: cloud.KindVMSS, SubscriptionID: sub, ResourceGroup: rg, Name: fmt.Sprintf("pool%d", i/10)}}
	}
	for i := 0; i < 100; i++ {
		ns := fmt.Sprintf("ns%d", i%10)
		in.Identities = append(in.Identities, msi(ns, fmt.Sprintf("id%d", i)))
		in.Bindings = append(in.Bindings, bnd(ns, fmt.Sprintf("b%d", i), fmt.Sprintf("id%d", i), fmt.Sprintf("sel%d", i)))
	}
	for i := 0; i < 20000; i++ {
		in.Pods = append(in.Pods, Pod{Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("pod-%d", i),
			Selector: fmt.Sprintf("sel%d", i%100), NodeName: fmt.Sprintf("node-%d", i%30)})
	}
	return in
}
