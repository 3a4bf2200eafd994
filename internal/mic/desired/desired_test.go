package desired

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
)

const sub, rg = "sub", "rg"

func resID(name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourcegroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s", sub, rg, name)
}

func msi(ns, name string) *aadv1.AzureIdentity {
	return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resID(ns + "-" + name), ClientID: "c-" + ns + "-" + name}}
}

func sp(ns, name string) *aadv1.AzureIdentity {
	return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c-" + name, TenantID: "t"}}
}

func nsd(id *aadv1.AzureIdentity) *aadv1.AzureIdentity {
	id.Annotations = map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
	return id
}

func bnd(ns, name, identity, selector string) *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector}}
}

func vmss(name string) cloud.Resource {
	return cloud.Resource{Kind: cloud.KindVMSS, SubscriptionID: sub, ResourceGroup: rg, Name: name}
}
func vm(name string) cloud.Resource {
	return cloud.Resource{Kind: cloud.KindVM, SubscriptionID: sub, ResourceGroup: rg, Name: name}
}

// world: nodes n1,n2 in VMSS pool; n3 a VM; n4 with a bad providerID.
func nodes() map[string]Node {
	return map[string]Node{
		"n1": {Name: "n1", Resource: vmss("pool")},
		"n2": {Name: "n2", Resource: vmss("pool")},
		"n3": {Name: "n3", Resource: vm("n3")},
		"n4": {Name: "n4", Err: errors.New("bad providerID")},
	}
}

// summary renders a State as sorted "group: aai" lines plus problem kinds.
func summary(st *State) (aais []string, problems []string) {
	for _, g := range st.Groups {
		for _, a := range g.AAIs {
			aais = append(aais, fmt.Sprintf("%s: %s", g.Resource.Name, a.Key))
		}
	}
	if st.Unresolved != nil {
		for _, a := range st.Unresolved.AAIs {
			aais = append(aais, fmt.Sprintf("unresolved: %s", a.Key))
		}
	}
	for _, p := range st.Problems {
		problems = append(problems, fmt.Sprintf("%s %s", p.Kind, p.Object))
	}
	sort.Strings(aais)
	sort.Strings(problems)
	if aais == nil {
		aais = []string{}
	}
	if problems == nil {
		problems = []string{}
	}
	return
}

func TestCompute(t *testing.T) {
	pod := func(ns, name, sel, node string) Pod {
		return Pod{Namespace: ns, Name: name, Selector: sel, NodeName: node}
	}
	cases := []struct {
		name       string
		pods       []Pod
		bindings   []*aadv1.AzureIdentityBinding
		identities []*aadv1.AzureIdentity
		opts       Options
		aais       []string
		problems   []string
	}{
		{name: "single identity on a VMSS node",
			pods: []Pod{pod("a", "p", "sel", "n1")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}, aais: []string{"pool: default/p-a-id"}},
		{name: "VM node",
			pods: []Pod{pod("a", "p", "sel", "n3")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}, aais: []string{"n3: default/p-a-id"}},
		{name: "unscheduled pod gets nothing",
			pods: []Pod{pod("a", "p", "sel", "")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}},
		{name: "pod without label gets nothing",
			pods: []Pod{pod("a", "p", "", "n1")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}},
		{name: "finished pod releases its identity",
			pods: []Pod{{Namespace: "a", Name: "job", Selector: "sel", NodeName: "n1", Finished: true}}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}},
		{name: "finished pod keeps its identity with KeepFinishedPods (upstream behaviour)", opts: Options{KeepFinishedPods: true},
			pods: []Pod{{Namespace: "a", Name: "job", Selector: "sel", NodeName: "n1", Finished: true}}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}, aais: []string{"pool: default/job-a-id"}},
		{name: "several identities on one selector",
			pods:       []Pod{pod("a", "p", "sel", "n1")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b1", "id1", "sel"), bnd("a", "b2", "id2", "sel"), bnd("a", "b3", "sp", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id1"), msi("a", "id2"), sp("a", "sp")},
			aais:       []string{"pool: default/p-a-id1", "pool: default/p-a-id2", "pool: default/p-a-sp"}},
		{name: "cross-namespace binding works outside namespaced mode",
			pods: []Pod{pod("a", "p", "sel", "n1")}, bindings: []*aadv1.AzureIdentityBinding{bnd("b", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("b", "id")}, aais: []string{"pool: default/p-a-id"}},
		{name: "forceNamespaced: AAI in the identity's namespace, cross-namespace pod refused", opts: Options{ForceNamespaced: true},
			pods:       []Pod{pod("a", "p", "sel", "n1"), pod("b", "q", "sel", "n1")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")},
			aais:       []string{"pool: a/p-a-id"}, problems: []string{"NamespaceMismatch a/b"}},
		{name: "annotation: namespaced identity only for its namespace",
			pods:       []Pod{pod("a", "p", "sel", "n1"), pod("b", "q", "sel", "n1")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{nsd(msi("a", "id"))},
			aais:       []string{"pool: a/p-a-id"}, problems: []string{"NamespaceMismatch a/b"}},
		{name: "same-name identities in two namespaces: first by binding namespace wins, warning on the other",
			pods:       []Pod{pod("x", "p", "sel", "n1")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("b", "bb", "id", "sel"), bnd("a", "ba", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id"), msi("b", "id")},
			aais:       []string{"pool: default/p-x-id"}, problems: []string{"NameCollision b/bb"}},
		{name: "binding naming a missing identity warns and does not stop others",
			pods:       []Pod{pod("a", "p", "sel", "n1")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b1", "gone", "sel"), bnd("a", "b2", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")},
			aais:       []string{"pool: default/p-a-id"}, problems: []string{"MissingIdentity a/b1"}},
		{name: "malformed resource ID: identity dropped with a warning",
			pods:     []Pod{pod("a", "p", "sel", "n1")},
			bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b1", "bad", "sel"), bnd("a", "b2", "id", "sel")},
			identities: []*aadv1.AzureIdentity{func() *aadv1.AzureIdentity { i := msi("a", "bad"); i.Spec.ResourceID = "/nope"; return i }(),
				msi("a", "id")},
			aais: []string{"pool: default/p-a-id"}, problems: []string{"BadResourceID a/bad", "MissingIdentity a/b1"}},
		{name: "pod on a node MIC does not know: unresolved group and a warning",
			pods: []Pod{pod("a", "p", "sel", "ghost")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}, aais: []string{"unresolved: default/p-a-id"}, problems: []string{"UnknownNode a/p"}},
		{name: "pod on a node with a bad providerID: unresolved group and a warning on the node",
			pods: []Pod{pod("a", "p", "sel", "n4")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")}, aais: []string{"unresolved: default/p-a-id"}, problems: []string{"BadNode /n4"}},
		{name: "two nodes of one VMSS form one group",
			pods:       []Pod{pod("a", "p1", "sel", "n1"), pod("a", "p2", "sel", "n2"), pod("a", "p3", "sel", "n3")},
			bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")},
			identities: []*aadv1.AzureIdentity{msi("a", "id")},
			aais:       []string{"n3: default/p3-a-id", "pool: default/p1-a-id", "pool: default/p2-a-id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := Compute(Input{Pods: tc.pods, Bindings: tc.bindings, Identities: tc.identities, Nodes: nodes(), Options: tc.opts})
			aais, problems := summary(st)
			if tc.aais == nil {
				tc.aais = []string{}
			}
			if tc.problems == nil {
				tc.problems = []string{}
			}
			if !reflect.DeepEqual(aais, tc.aais) {
				t.Errorf("AAIs = %v, want %v", aais, tc.aais)
			}
			if !reflect.DeepEqual(problems, tc.problems) {
				t.Errorf("problems = %v, want %v", problems, tc.problems)
			}
			for _, p := range st.Problems {
				if !strings.Contains(p.Message, p.Object.Name) {
					t.Errorf("problem message %q does not name the object %s", p.Message, p.Object)
				}
			}
		})
	}
}

func TestComputeGroupIdentities(t *testing.T) {
	st := Compute(Input{
		Pods: []Pod{{Namespace: "a", Name: "p1", Selector: "s1", NodeName: "n1"}, {Namespace: "a", Name: "p2", Selector: "s2", NodeName: "n2"},
			{Namespace: "a", Name: "p3", Selector: "s1", NodeName: "n2"}},
		Bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b1", "id1", "s1"), bnd("a", "b2", "id2", "s2"), bnd("a", "b3", "sp", "s2")},
		Identities: []*aadv1.AzureIdentity{msi("a", "id1"), msi("a", "id2"), sp("a", "sp")},
		Nodes:      nodes(),
	})
	g := st.Groups[vmss("pool").Key()]
	want := map[string]string{strings.ToLower(resID("a-id1")): "c-a-id1", strings.ToLower(resID("a-id2")): "c-a-id2"}
	if !reflect.DeepEqual(g.Identities, want) {
		t.Fatalf("pool identities = %v, want %v (service principals need no assignment)", g.Identities, want)
	}
}

// objects turns a desired state into existing objects, as if MIC had written it.
func objects(st *State, state aadv1.AssignedIdentityState) []*aadv1.AzureAssignedIdentity {
	var out []*aadv1.AzureAssignedIdentity
	for _, a := range st.AAIs {
		out = append(out, a.Object(state))
	}
	return out
}

func keys(as []*AAI) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, a.Key.String())
	}
	sort.Strings(out)
	return out
}

func pairKeys(ps []Pair) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.Want.Key.String())
	}
	sort.Strings(out)
	return out
}

func objKeys(os []*aadv1.AzureAssignedIdentity) []string {
	out := []string{}
	for _, o := range os {
		out = append(out, o.Namespace+"/"+o.Name)
	}
	return out
}

func TestDiffAfterChanges(t *testing.T) {
	base := func() Input {
		return Input{
			Pods:       []Pod{{Namespace: "a", Name: "p", Selector: "sel", NodeName: "n1"}},
			Bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel"), bnd("a", "b2", "id2", "other")},
			Identities: []*aadv1.AzureIdentity{msi("a", "id"), msi("a", "id2")},
			Nodes:      nodes(),
		}
	}
	type result struct{ create, update, keep, del []string }
	cases := []struct {
		name   string
		change func(*Input)
		want   result
	}{
		{"nothing changed", func(*Input) {}, result{keep: []string{"default/p-a-id"}}},
		{"pod label changed → old AAI deleted, new created", func(in *Input) { in.Pods[0].Selector = "other" },
			result{create: []string{"default/p-a-id2"}, del: []string{"default/p-a-id"}}},
		{"pod moved node → update", func(in *Input) { in.Pods[0].NodeName = "n2" }, result{update: []string{"default/p-a-id"}}},
		{"identity edited → update", func(in *Input) { in.Identities[0].ResourceVersion = "2" }, result{update: []string{"default/p-a-id"}}},
		{"binding edited → update", func(in *Input) { in.Bindings[0].ResourceVersion = "2" }, result{update: []string{"default/p-a-id"}}},
		{"binding deleted → delete", func(in *Input) { in.Bindings = in.Bindings[1:] }, result{del: []string{"default/p-a-id"}}},
		{"identity deleted → delete", func(in *Input) { in.Identities = in.Identities[1:] }, result{del: []string{"default/p-a-id"}}},
		{"pod deleted → delete", func(in *Input) { in.Pods = nil }, result{del: []string{"default/p-a-id"}}},
		{"pod finished → delete", func(in *Input) { in.Pods[0].Finished = true }, result{del: []string{"default/p-a-id"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			have := objects(Compute(base()), aadv1.AssignedIDAssigned)
			in := base()
			tc.change(&in)
			st := Compute(in)
			var want []*AAI
			for _, a := range st.AAIs {
				want = append(want, a)
			}
			c := Diff(want, have)
			got := result{keys(c.Create), pairKeys(c.Update), pairKeys(c.Keep), objKeys(c.Delete)}
			for _, s := range []*[]string{&tc.want.create, &tc.want.update, &tc.want.keep, &tc.want.del} {
				if *s == nil {
					*s = []string{}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("diff = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDiffObjectBeingDeletedIsFinishedEvenIfDesired(t *testing.T) {
	st := Compute(Input{Pods: []Pod{{Namespace: "a", Name: "p", Selector: "sel", NodeName: "n1"}},
		Bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")}, Identities: []*aadv1.AzureIdentity{msi("a", "id")}, Nodes: nodes()})
	have := objects(st, aadv1.AssignedIDAssigned)
	now := metav1.Now()
	have[0].DeletionTimestamp = &now
	c := Diff([]*AAI{st.AAIs[Key{Namespace: "default", Name: "p-a-id"}]}, have)
	if len(c.Delete) != 1 || len(c.Keep)+len(c.Create)+len(c.Update) != 0 {
		t.Fatalf("diff = %+v, want only the delete", c)
	}
}

func TestObjectShape(t *testing.T) {
	st := Compute(Input{Pods: []Pod{{Namespace: "a", Name: "p", Selector: "sel", NodeName: "n1"}},
		Bindings: []*aadv1.AzureIdentityBinding{bnd("a", "b", "id", "sel")}, Identities: []*aadv1.AzureIdentity{msi("a", "id")}, Nodes: nodes()})
	o := st.AAIs[Key{Namespace: "default", Name: "p-a-id"}].Object(aadv1.AssignedIDCreated)
	if o.Labels[aadv1.AssignedIdentityNodeLabel] != "n1" || o.Finalizers[0] != aadv1.AssignedIdentityFinalizer ||
		o.Spec.Pod != "p" || o.Spec.PodNamespace != "a" || o.Spec.NodeName != "n1" || o.Spec.AzureIdentityRef.Name != "id" ||
		o.Spec.AzureBindingRef.Name != "b" || o.Status.Status != aadv1.AssignedIDCreated || o.Status.AvailableReplicas != 1 {
		t.Fatalf("object shape wrong: %+v", o)
	}
}

func TestPlanIdentities(t *testing.T) {
	a, b, c, d := "/x/a", "/x/b", "/x/c", "/x/d"
	cur := func(ids ...string) cloud.Identities {
		m := map[string]string{}
		for _, id := range ids {
			m[id] = "client" + id[3:]
		}
		return cloud.Identities{UserAssigned: m}
	}
	cases := []struct {
		name string
		in   PlanInput
		want Plan
	}{
		{"add missing, keep present", PlanInput{Desired: map[string]string{a: "ca", b: "cb"}, Current: cur(a)}, Plan{Add: []string{b}}},
		{"remove only what MIC owns", PlanInput{Desired: map[string]string{}, Current: cur(a, b), Owned: map[string]string{a: "ca"}}, Plan{Remove: []string{a}}},
		{"never remove a desired identity", PlanInput{Desired: map[string]string{a: "ca"}, Current: cur(a), Owned: map[string]string{a: "ca"}}, Plan{}},
		{"immutable by client ID from the record", PlanInput{Current: cur(a), Owned: map[string]string{a: "CA"}, Immutable: map[string]bool{"ca": true}}, Plan{}},
		{"immutable by client ID from ARM", PlanInput{Current: cur(a), Owned: map[string]string{a: ""}, Immutable: map[string]bool{"clienta": true}}, Plan{}},
		{"owned but already gone: nothing to remove", PlanInput{Current: cur(), Owned: map[string]string{a: "ca"}}, Plan{}},
		{"held (quarantined) identity not added", PlanInput{Desired: map[string]string{a: "", c: ""}, Current: cur(),
			Hold: func(id string) bool { return id == c }}, Plan{Add: []string{a}, Held: []string{c}}},
		{"adds and removes together", PlanInput{Desired: map[string]string{d: ""}, Current: cur(a, b), Owned: map[string]string{a: "", b: ""}},
			Plan{Add: []string{d}, Remove: []string{a, b}}},
	}
	for _, tc := range cases {
		got := PlanIdentities(tc.in)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestChunk(t *testing.T) {
	var p Plan
	for i := 0; i < 200; i++ {
		p.Add = append(p.Add, fmt.Sprintf("a%03d", i))
	}
	for i := 0; i < 120; i++ {
		p.Remove = append(p.Remove, fmt.Sprintf("r%03d", i))
	}
	ch := Chunk(p, 150)
	if len(ch) != 3 {
		t.Fatalf("got %d chunks, want 3", len(ch))
	}
	total := 0
	for _, c := range ch {
		if n := len(c.Add) + len(c.Remove); n > 150 || n == 0 {
			t.Fatalf("chunk of %d entries", n)
		}
		total += len(c.Add) + len(c.Remove)
	}
	if total != 320 || len(ch[0].Remove) != 120 {
		t.Fatalf("total %d (want 320), first chunk removes %d (want all 120 removals first)", total, len(ch[0].Remove))
	}
	if len(Chunk(Plan{}, 150)) != 0 {
		t.Fatal("empty plan must give no chunk")
	}
}

func TestInheritedNamesIdentitiesOnlyAnEarlierMICAssigned(t *testing.T) {
	obj := func(id string, st aadv1.AssignedIdentityState, ours bool) *aadv1.AzureAssignedIdentity {
		o := &aadv1.AzureAssignedIdentity{Spec: aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: &aadv1.AzureIdentity{
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: id, ClientID: "client-" + id}}}}
		o.Status.Status = st
		if ours {
			o.Annotations = map[string]string{WrittenByAnnotation: WrittenByValue}
		}
		return o
	}
	sp := obj("", aadv1.AssignedIDAssigned, false)
	sp.Spec.AzureIdentityRef.Spec.Type = aadv1.ServicePrincipal
	have := []*aadv1.AzureAssignedIdentity{
		obj("/X/Upstream", aadv1.AssignedIDAssigned, false), // adopted, ID lower-cased
		obj("/x/pending", aadv1.AssignedIDCreated, false),   // the earlier MIC never confirmed it
		obj("/x/mine", aadv1.AssignedIDAssigned, true),      // written by this MIC
		obj("/x/owned", aadv1.AssignedIDAssigned, false),    // already recorded
		sp, // service principals need no VM identity
	}
	got := Inherited(have, map[string]string{"/x/owned": "c"})
	want := map[string]string{"/x/upstream": "client-/X/Upstream"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Inherited = %v, want %v", got, want)
	}
}
