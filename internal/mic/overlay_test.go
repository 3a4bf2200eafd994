package mic

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

func aai(name, rv string) *aadv1.AzureAssignedIdentity {
	return &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, ResourceVersion: rv}}
}

func names(objs []*aadv1.AzureAssignedIdentity) map[string]string {
	m := map[string]string{}
	for _, o := range objs {
		m[o.Name] = o.ResourceVersion
	}
	return m
}

func all(*aadv1.AzureAssignedIdentity) bool { return true }

// A snapshot holds the cache's objects only; MIC's own writes come from the overlay, in every
// worker's view, until the cache shows them. Forgetting a write early would make MIC create the
// object a second time.
func TestOverlayRemembersOwnWritesUntilTheCacheShowsThem(t *testing.T) {
	o := newOverlay()
	o.put(aai("x", "10"))

	// The cache has not caught up: a pass prunes nothing, a worker sees x.
	o.prune(nil)
	if got := names(o.view(nil, all)); got["x"] != "10" {
		t.Fatalf("worker sees %v, want x at 10", got)
	}
	// A stale cached copy does not win either.
	if got := names(o.view([]*aadv1.AzureAssignedIdentity{aai("x", "9")}, all)); got["x"] != "10" {
		t.Fatalf("worker on a lagging cache sees %v, want x at 10", got)
	}
	o.prune([]*aadv1.AzureAssignedIdentity{aai("x", "9")})
	if o.size() != 1 {
		t.Fatal("pruned a write the cache does not show yet")
	}
	// The cache catches up: the entry is dropped and the cache's object used.
	o.prune([]*aadv1.AzureAssignedIdentity{aai("x", "10")})
	if got := names(o.view([]*aadv1.AzureAssignedIdentity{aai("x", "10")}, all)); got["x"] != "10" || o.size() != 0 {
		t.Fatalf("cache caught up: sees %v with %d overlay entries, want x and none", got, o.size())
	}
}

// An object created by MIC that the cache lacks belongs to one VM/VMSS only.
func TestOverlayAddsCreatedObjectsOnlyToTheirGroup(t *testing.T) {
	o := newOverlay()
	o.put(aai("x", "10"))
	if got := names(o.view(nil, func(*aadv1.AzureAssignedIdentity) bool { return false })); len(got) != 0 {
		t.Fatalf("another group's view has %v", got)
	}
}

func TestOverlayHidesOwnDeletionUntilTheCacheDropsTheObject(t *testing.T) {
	o := newOverlay()
	o.deleted(objKey("y"), 7)
	cached := []*aadv1.AzureAssignedIdentity{aai("y", "7")}
	if got := names(o.view(cached, all)); len(got) != 0 {
		t.Fatalf("worker sees %v after MIC deleted y", got)
	}
	o.prune(cached)
	if got := names(o.view(cached, all)); len(got) != 0 || o.size() != 1 {
		t.Fatalf("after a pass on a lagging cache the worker sees %v (%d entries)", got, o.size())
	}
	// Someone re-created it since: the newer object wins.
	if got := names(o.view([]*aadv1.AzureAssignedIdentity{aai("y", "9")}, all)); got["y"] != "9" {
		t.Fatalf("re-created y: sees %v, want y at 9", got)
	}
	// The cache no longer has it: forgotten.
	o.prune(nil)
	if o.size() != 0 {
		t.Fatalf("%d entries after the cache dropped y", o.size())
	}
}

func TestOverlayTellsOwnEventsFromOthers(t *testing.T) {
	o := newOverlay()
	o.put(aai("x", "10"))
	o.deleted(objKey("y"), 7)
	for _, c := range []struct {
		obj     *aadv1.AzureAssignedIdentity
		deleted bool
		want    bool
	}{
		{aai("x", "10"), false, true},  // our create
		{aai("x", "11"), false, false}, // someone's newer write
		{aai("x", "10"), true, false},  // someone deleted our object
		{aai("y", "7"), true, true},    // our delete
		{aai("z", "1"), false, false},  // never ours
	} {
		if got := o.ours(c.obj, c.deleted); got != c.want {
			t.Errorf("ours(%s@%s, deleted=%v) = %v, want %v", c.obj.Name, c.obj.ResourceVersion, c.deleted, got, c.want)
		}
	}
}

func objKey(name string) desired.Key { return desired.Key{Namespace: "default", Name: name} }
