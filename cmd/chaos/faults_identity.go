package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// faultIdentities are the standard identities identity faults pick from (Target modulo).
var faultIdentities = []string{azStdA, azStdB, azStdNS}

// identityNotFound makes f's node's IMDS answer "Identity not found" (400 invalid_request, what
// IMDS answers before an assignment has propagated) for one identity for the window: one the
// node's VM/VMSS holds, when it holds any of faultIdentities, else another of them.
func (inj *injector) identityNotFound(f chaos.Fault) {
	n := inj.sb.Nodes[f.Target%len(inj.sb.Nodes)]
	held, _ := inj.sb.Emulator.AssignedIdentities(nodeResources(inj.sb)[n.Name])
	var info emulator.IdentityInfo
	var name string
	// One the VM/VMSS holds first; an identity deleted out of band (being re-created) is skipped.
	for _, want := range []bool{true, false} {
		for i := range faultIdentities {
			cand := faultIdentities[(f.Target+i)%len(faultIdentities)]
			if ci, err := inj.sb.Emulator.Identity(cand); err == nil && name == "" && containsFold(held, ci.ID) == want {
				info, name = ci, cand
			}
		}
	}
	if name == "" {
		inj.note("%s at %s: none of %v exists now; no window", f.Kind, f.At, faultIdentities)
		return
	}
	// NMI may ask by client ID or by resource ID: the window covers both.
	for _, sel := range []string{info.ClientID, info.ID} {
		inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Resource: n.HostKey,
			Identity: sel, Status: http.StatusBadRequest, Code: "invalid_request", Message: "Identity not found"})
	}
	klog.InfoS("IMDS identity-not-found window", "node", n.Name, "identity", name, "for", f.For)
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// recreateIdentity deletes f's identity through ARM (armmsi, as `az identity delete` does) and,
// after f.For in the background, re-creates it (Azure gives it a new client and principal ID)
// and repairs as docs/troubleshooting.md tells an operator to: set the new clientID in every
// AzureIdentity naming it, and remove the stale entry from every VM/VMSS (as `az vmss identity
// remove`), after which MIC assigns the new identity.
func (inj *injector) recreateIdentity(ctx context.Context, f chaos.Fault) time.Time {
	name := faultIdentities[f.Target%len(faultIdentities)]
	msi, err := inj.msiClient()
	if err != nil {
		inj.note("%s at %s: %v", f.Kind, f.At, err)
		return time.Now()
	}
	rg := inj.sb.Emulator.Config().ResourceGroup
	old, err := msi.Get(ctx, rg, name, nil)
	if err == nil {
		_, err = msi.Delete(ctx, rg, name, nil)
	}
	if err != nil {
		inj.note("%s at %s: deleting %s through ARM: %v", f.Kind, f.At, name, err)
		return time.Now()
	}
	klog.InfoS("identity deleted through ARM", "identity", name, "clientID", *old.Properties.ClientID)
	end := inj.windowEnd(f)
	inj.atEnd(ctx, end, func() {
		// Even at the end of the run the identity comes back: the final checks need it.
		if err := inj.recreateAndRepair(context.Background(), msi, name, *old.Properties.ClientID); err != nil {
			inj.note("%s at %s: %v", f.Kind, f.At, err)
		}
	})
	return end
}

func (inj *injector) recreateAndRepair(ctx context.Context, msi *armmsi.UserAssignedIdentitiesClient, name, oldClientID string) error {
	rg, loc := inj.sb.Emulator.Config().ResourceGroup, inj.sb.Emulator.Config().Location
	re, err := msi.CreateOrUpdate(ctx, rg, name, armmsi.Identity{Location: to.Ptr(loc)}, nil)
	if err != nil {
		return fmt.Errorf("re-creating %s through ARM: %w", name, err)
	}
	id, clientID := *re.ID, *re.Properties.ClientID
	if strings.EqualFold(clientID, oldClientID) {
		return fmt.Errorf("re-created %s kept client ID %s: Azure gives a new one", name, clientID)
	}
	var list aadv1.AzureIdentityList
	if err := inj.crc.List(ctx, &list); err != nil {
		return fmt.Errorf("listing AzureIdentities to repair %s: %w", name, err)
	}
	var fixed []string
	for i := range list.Items {
		ai := &list.Items[i]
		if !strings.EqualFold(ai.Spec.ResourceID, id) {
			continue
		}
		key := client.ObjectKeyFromObject(ai)
		if err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			var cur aadv1.AzureIdentity
			if err := inj.crc.Get(ctx, key, &cur); err != nil {
				return err
			}
			cur.Spec.ClientID = clientID
			return inj.crc.Update(ctx, &cur)
		}); err != nil {
			return fmt.Errorf("setting the new clientID %s in AzureIdentity %s: %w", clientID, key, err)
		}
		fixed = append(fixed, key.String())
	}
	var removed []string
	for _, res := range uniqueResources(inj.sb) {
		held, _ := inj.sb.Emulator.AssignedIdentities(res)
		if !containsFold(held, id) {
			continue
		}
		if err := inj.sb.Emulator.RemoveIdentity(res, id); err != nil {
			return fmt.Errorf("removing the stale %s from %s: %w", name, res, err)
		}
		removed = append(removed, res)
	}
	inj.note("identity %s re-created: client ID %s -> %s; AzureIdentities updated %v; stale entry removed from %v", name, oldClientID, clientID, fixed, removed)
	klog.InfoS("identity re-created and repaired", "identity", name, "clientID", clientID, "azureIdentities", fixed, "staleRemovedFrom", removed)
	return nil
}

func uniqueResources(sb *sandbox.Sandbox) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range nodeResources(sb) {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// msiClient is an ARM client for user-assigned identities, signed in as MIC's principal (the
// emulator's only one with rights on the resource group).
func (inj *injector) msiClient() (*armmsi.UserAssignedIdentitiesClient, error) {
	cred, err := inj.sb.Emulator.PrincipalCredential(sandbox.MICAppID)
	if err != nil {
		return nil, err
	}
	return armmsi.NewUserAssignedIdentitiesClient(inj.sb.Emulator.Config().SubscriptionID, cred, inj.sb.Emulator.ARMClientOptions())
}
