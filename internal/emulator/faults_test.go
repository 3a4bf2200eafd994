package emulator

import (
	"net/url"
	"strings"
	"testing"
)

// An IMDS fault with Identity answers "Identity not found" (what IMDS answers before an
// assignment has propagated) for that identity only, named by client ID or resource ID.
func TestIMDSFaultForOneIdentity(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.VirtualMachines[0].UserAssignedIdentities = []string{"id1", "id2"} })
	id1, _ := e.Identity("id1")
	id2, _ := e.Identity("id2")
	host, err := e.HostKey("vm-0")
	if err != nil {
		t.Fatal(err)
	}
	for _, sel := range []string{id1.ClientID, id1.ID} {
		e.AddFault(Fault{Service: ServiceIMDS, Operation: OpIMDSToken, Resource: host, Identity: sel, Status: 400, Code: "invalid_request", Message: "Identity not found"})
	}
	for _, q := range []string{"&client_id=" + id1.ClientID, "&mi_res_id=" + url.QueryEscape(id1.ID), "&msi_res_id=" + url.QueryEscape(strings.ToUpper(id1.ID))} {
		if st, b := imdsGet(t, e, "vm-0", tokPath+q, nil); st != 400 || !strings.Contains(b, `"Identity not found"`) || !strings.Contains(b, `"invalid_request"`) {
			t.Errorf("%s during the fault: %d %s, want 400 invalid_request Identity not found", q, st, b)
		}
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath+"&client_id="+id2.ClientID, nil); st != 200 {
		t.Errorf("the other identity during the fault: %d %s, want 200", st, b)
	}
	if n := e.Count(CounterKey{Service: ServiceIMDS, Operation: OpIMDSToken, Resource: host, Status: 400}); n != 3 {
		t.Errorf("IMDS 400 count = %d, want 3", n)
	}
	if n := e.FaultHits(); n != 3 {
		t.Errorf("FaultHits = %d, want 3 (the other identity's request matched no fault)", n)
	}
	e.ClearFaults()
	if st, b := imdsGet(t, e, "vm-0", tokPath+"&client_id="+id1.ClientID, nil); st != 200 {
		t.Errorf("after the fault: %d %s, want 200", st, b)
	}
}

// An identity deleted through ARM stays on the VM with null IDs (IMDS: "Identity not found"); a
// PATCH naming it fails FailedIdentityOperation and names it; a PATCH removing it succeeds.
func TestDeletedIdentityOnVM(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.VirtualMachines[0].UserAssignedIdentities = []string{"id1", "id2"} })
	rg := e.Config().ResourceGroup
	id1, _ := e.Identity("id1")
	if err := e.DeleteIdentity("id1"); err != nil {
		t.Fatal(err)
	}
	vc := vmClient(t, e, testApp)
	vm, err := vc.Get(ctx(t), rg, "vm-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, v := range vm.Identity.UserAssignedIdentities {
		if strings.EqualFold(id, id1.ID) && (v.ClientID != nil || v.PrincipalID != nil) {
			t.Errorf("deleted identity shows IDs %v/%v, want null", v.ClientID, v.PrincipalID)
		}
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath+"&client_id="+id1.ClientID, nil); st != 400 || !strings.Contains(b, "Identity not found") {
		t.Errorf("IMDS for the deleted identity: %d %s", st, b)
	}
	_, err = vc.BeginUpdate(ctx(t), rg, "vm-sys", vmAdd(e, "id1"), nil)
	if re := respErr(t, err); re.StatusCode != 400 || re.ErrorCode != "FailedIdentityOperation" || !strings.Contains(err.Error(), id1.ID) {
		t.Errorf("PATCH adding the deleted identity: %v, want 400 FailedIdentityOperation naming it", err)
	}
	p, err := vc.BeginUpdate(ctx(t), rg, "vm-0", armcomputeVMUpdate{Identity: &armcomputeVMIdentity{Type: to(uaType),
		UserAssignedIdentities: map[string]*armcomputeUAValue{id1.ID: nil}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatalf("PATCH removing the deleted identity: %v", err)
	}
	if ids, _ := e.AssignedIdentities("vm-0"); len(ids) != 1 || !strings.EqualFold(ids[0], idID(e, "id2")) {
		t.Errorf("after removal: %v, want only id2", ids)
	}
}
