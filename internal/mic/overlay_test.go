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

// A worker's snapshot can hold MIC's own write (taken from the overlay at planning time) while
// the informer cache still lags. Passing that snapshot through the overlay must not make MIC
// forget the write: the next pass would not see the object and create it a second time.
func TestOverlayRemembersOwnWritesUntilTheCacheShowsThem(t *testing.T) {
	o := newOverlay()
	x := aai("x", "10")
	o.put(x)

	// Planning pass: the cache has not caught up, the overlay supplies x.
	snap := o.apply(nil, nil)
	if got := names(snap); got["x"] != "10" {
		t.Fatalf("planning pass sees %v, want x at 10", got)
	}
	// Worker on that snapshot.
	if got := names(o.apply(snap, func(*aadv1.AzureAssignedIdentity) bool { return true })); got["x"] != "10" {
		t.Fatalf("worker sees %v, want x at 10", got)
	}
	// Next planning pass, cache still lagging: x must still be there.
	if got := names(o.apply(nil, nil)); got["x"] != "10" {
		t.Fatalf("after a worker used the snapshot, the next pass sees %v: MIC forgot its own create", got)
	}
	// The cache catches up: the entry is dropped and the cache's object used.
	if got := names(o.apply([]*aadv1.AzureAssignedIdentity{aai("x", "10")}, nil)); got["x"] != "10" || len(o.m) != 0 {
		t.Fatalf("cache caught up: sees %v with %d overlay entries, want x and none", got, len(o.m))
	}
}

func TestOverlayHidesOwnDeletionUntilTheCacheDropsTheObject(t *testing.T) {
	o := newOverlay()
	o.deleted(objKey("y"), 7)
	cached := []*aadv1.AzureAssignedIdentity{aai("y", "7")}
	if got := names(o.apply(cached, func(*aadv1.AzureAssignedIdentity) bool { return true })); len(got) != 0 {
		t.Fatalf("worker sees %v after MIC deleted y", got)
	}
	if got := names(o.apply(cached, nil)); len(got) != 0 {
		t.Fatalf("planning pass sees %v after MIC deleted y", got)
	}
	// Someone re-created it since: the newer object wins.
	if got := names(o.apply([]*aadv1.AzureAssignedIdentity{aai("y", "9")}, nil)); got["y"] != "9" {
		t.Fatalf("re-created y: sees %v, want y at 9", got)
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
