package armcloud_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/cloud/armcloud"
	"github.com/podidentity/podidentity/internal/emulator"
)

// Removing MIC's last identity from a VM with a system-assigned identity sets the type to
// SystemAssigned, which drops every user-assigned identity. If someone added one since MIC read
// the VM, that PATCH must be refused (If-Match) rather than silently remove theirs; after a re-read
// MIC removes only its own.
func TestRemovingTheLastIdentityNeverDropsOneSomeoneAddedSinceTheRead(t *testing.T) {
	w := newEmulated(t, emulator.Config{
		VirtualMachines:        []emulator.VMConfig{{Name: "vm", SystemAssigned: true, UserAssignedIdentities: []string{"ours"}}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "ours"}, {Name: "theirs"}},
	})
	az := w.client(t, armcloud.Options{})
	ctx := context.Background()
	vm := w.vm("vm")
	ours := emulator.IdentityID(w.sub, w.rg, "ours")
	read, err := az.Get(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if read.ETag == "" || !read.SystemAssigned || !read.Has(ours) {
		t.Fatalf("read %+v, want an ETag, the system-assigned identity and ours", read)
	}
	if err := w.e.AssignIdentity("vm", "theirs"); err != nil {
		t.Fatal(err)
	}
	_, err = az.Update(ctx, vm, cloud.Update{Remove: []string{ours}, Current: read})
	if !errors.Is(err, cloud.ErrStale) {
		t.Fatalf("PATCH based on the stale read: err = %v, want ErrStale", err)
	}
	if got := identitiesOn(t, w, "vm"); len(got) != 2 {
		t.Fatalf("after the refused PATCH the VM has %v, want ours and theirs", got)
	}
	fresh, err := az.Get(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := az.Update(ctx, vm, cloud.Update{Remove: []string{ours}, Current: fresh}); err != nil {
		t.Fatal(err)
	}
	got := identitiesOn(t, w, "vm")
	if len(got) != 1 || !strings.HasSuffix(strings.ToLower(got[0]), "/theirs") {
		t.Errorf("after removing ours the VM has %v, want only theirs", got)
	}
	if after, err := az.Get(ctx, vm); err != nil || !after.SystemAssigned {
		t.Errorf("system-assigned identity lost (%v): %+v", err, after)
	}
}

func identitiesOn(t *testing.T, w *emulated, resource string) []string {
	t.Helper()
	ids, err := w.e.AssignedIdentities(resource)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}
