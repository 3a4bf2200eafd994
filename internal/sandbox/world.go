package sandbox

import (
	"fmt"
	"time"

	"github.com/podidentity/podidentity/internal/emulator"
)

// The default world: what an AKS cluster with one VMSS pool and one VM looks like from Azure.
const (
	ResourceGroup = "MC_podidentity_sandbox_westus2"
	ScaleSet      = "aks-nodepool1-12345678-vmss"
	VMName        = "aks-agentpool-12345678-0"
	// MICAppID and MICSecret are MIC's service principal (azure.json aadClientId/aadClientSecret).
	MICAppID  = "7e3f4a56-1b2c-4d5e-8f90-a1b2c3d4e5f6"
	MICSecret = "sandbox-mic-secret"
)

// Identities are the world's user-assigned identities; the first is the demo's.
var Identities = []string{"demo-identity", "keyvault-reader", "storage-writer"}

// Timing profiles of the emulated Azure.
const (
	// TimingFast is for tests: assignments take a few hundred milliseconds.
	TimingFast = "fast"
	// TimingDemo shows NMI waiting for MIC without making people wait long.
	TimingDemo = "demo"
	// TimingRealistic uses the durations Azure documents (VM 10-20 s, VMSS 40-60 s).
	TimingRealistic = "realistic"
)

func timing(profile string) (emulator.Timing, error) {
	switch profile {
	case TimingFast:
		t := emulator.FastTiming()
		t.IMDSPropagation = emulator.D(100 * time.Millisecond)
		return t, nil
	case TimingDemo:
		return emulator.Timing{VMOperation: emulator.D(3 * time.Second), VMSSOperation: emulator.D(6 * time.Second),
			OperationRetryAfter: emulator.D(time.Second), IMDSPropagation: emulator.D(time.Second)}, nil
	case TimingRealistic:
		return emulator.Timing{VMOperation: emulator.D(15 * time.Second), VMSSOperation: emulator.D(50 * time.Second),
			OperationRetryAfter: emulator.D(5 * time.Second), IMDSPropagation: emulator.D(5 * time.Second),
			IMDSLatency: emulator.D(10 * time.Millisecond)}, nil
	}
	return emulator.Timing{}, fmt.Errorf("timing profile %q unknown: use %s, %s or %s", profile, TimingFast, TimingDemo, TimingRealistic)
}

// World returns the default emulated world: one subscription, the node resource group, one VM
// scale set with two instances, one standalone VM, three user-assigned identities for standard
// mode, one for federated mode (FederatedIdentity) and MIC's service principal.
func World(profile string) (emulator.Config, error) {
	t, err := timing(profile)
	if err != nil {
		return emulator.Config{}, err
	}
	cfg := emulator.Config{
		TenantID:                emulator.DefaultTenantID,
		SubscriptionID:          emulator.DefaultSubscriptionID,
		ResourceGroup:           ResourceGroup,
		Location:                emulator.DefaultLocation,
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: ScaleSet, Instances: 2}},
		// The standalone VM has a system-assigned identity, as many AKS VMs do: MIC must leave it
		// alone while it adds and removes user-assigned ones.
		VirtualMachines:   []emulator.VMConfig{{Name: VMName, SystemAssigned: true}},
		ServicePrincipals: []emulator.PrincipalConfig{{AppID: MICAppID, Secrets: []string{MICSecret}}},
		Timing:            t,
		IMDS:              emulator.DefaultIMDSLimits(),
	}
	for _, name := range Identities {
		cfg.UserAssignedIdentities = append(cfg.UserAssignedIdentities, emulator.IdentityConfig{Name: name})
	}
	// The federated demo's identity: on no VM, its federated credential is added once the
	// apiserver's issuer is known (addFederatedDemo).
	cfg.UserAssignedIdentities = append(cfg.UserAssignedIdentities, emulator.IdentityConfig{Name: FederatedIdentity})
	return cfg, nil
}

// nodeSpec is one node of the world.
type nodeSpec struct {
	Name, ProviderID, HostKey, Pool string
}

// nodesOf lists the world's nodes: every VMSS instance (named as AKS names them) and every VM.
func nodesOf(cfg emulator.Config) []nodeSpec {
	var out []nodeSpec
	for _, ss := range cfg.VirtualMachineScaleSets {
		sub, rg := orDefault(ss.SubscriptionID, cfg.SubscriptionID), orDefault(ss.ResourceGroup, cfg.ResourceGroup)
		for i := 0; i < ss.Instances; i++ {
			pid := fmt.Sprintf("azure://%s/virtualMachines/%d", emulator.VMSSID(sub, rg, ss.Name), i)
			out = append(out, nodeSpec{Name: emulator.ComputerName(ss.Name, i), ProviderID: pid, HostKey: pid, Pool: ss.Name})
		}
	}
	for _, vm := range cfg.VirtualMachines {
		sub, rg := orDefault(vm.SubscriptionID, cfg.SubscriptionID), orDefault(vm.ResourceGroup, cfg.ResourceGroup)
		out = append(out, nodeSpec{Name: vm.Name, ProviderID: "azure://" + emulator.VMID(sub, rg, vm.Name), HostKey: vm.Name, Pool: vm.Name})
	}
	return out
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
