package mic_test

import (
	"testing"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
)

const (
	created  = aadv1.AssignedIDCreated
	assigned = aadv1.AssignedIDAssigned
)

func TestIdentityIsAssignedToTheVMSSWhenAPodIsLabelled(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}},
	})
	w.startMIC(micOpts{})
	w.identity("web")
	w.binding("web-binding", "web", "web-sel")
	n := w.vmssNode("pool", 0)
	w.pod("web-1", n, "web-sel")

	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("web-1", "web"): assigned})
	w.waitAssigned("pool", "web")

	// Removing the pod releases the identity and deletes the AAI.
	w.deletePod("web-1")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}
