// Package emulator is an offline Azure emulator for podidentity: ARM (VM/VMSS identity and
// user-assigned identities) and Azure AD over HTTPS, and one IMDS endpoint per VM or VMSS
// instance over plain HTTP. The official Azure SDK for Go works against it unchanged: only the
// cloud configuration, the transport (to trust the emulator's CA) and poll/retry options differ.
//
// Typical use in a test:
//
//	e, err := emulator.New(emulator.Config{
//		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
//		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "id1"}},
//		ServicePrincipals:       []emulator.PrincipalConfig{{AppID: appID, Secrets: []string{"s"}}},
//		Timing:                  emulator.FastTiming(),
//	})
//	err = e.Start()
//	defer e.Close()
//
//	// ARM + AAD: credentials need e.ClientOptions() and DisableInstanceDiscovery: true;
//	// ARM clients take e.ARMClientOptions().
//	cred, _ := azidentity.NewClientSecretCredential(e.Config().TenantID, appID, "s",
//		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true})
//	vmss, _ := armcompute.NewVirtualMachineScaleSetsClient(e.Config().SubscriptionID, cred, e.ARMClientOptions())
//
//	// IMDS of one instance: a transport that maps 169.254.169.254:80 to it, or its URL.
//	hc, _ := e.IMDSTransport("pool/0")
//	mi, _ := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
//		ClientOptions: azcore.ClientOptions{Transport: hc}, ID: azidentity.ClientID(clientID)})
//	url, _ := e.StartIMDS("pool/0", "") // or attach e.IMDSHandler("pool/0") to any listener
//
// World: Config (or a YAML file read by Load) lists VMs, scale sets with instances,
// user-assigned identities and service principals; GUIDs not given are derived from resource
// IDs, so IDs are deterministic. Hosts (for IMDS) are named by VM name or ID, VMSS instance
// ID or provider ID, "vmss/instanceID" or the instance computer name (ComputerName).
//
// ARM semantics: PATCH of a VM/VMSS identity block ({} adds, null removes, type transitions
// keep the system-assigned principal, IDs case-insensitive) starts a long-running operation
// (Azure-AsyncOperation + Location headers, InProgress → Succeeded/Failed) lasting
// Timing.VMOperation / VMSSOperation; reads see the old identities until it ends; a second write
// meanwhile gets 409 ConflictCode. Errors use real ARM bodies (150-identity limit,
// FailedIdentityOperation, LinkedAuthorizationFailed, Deleting, ResourceNotFound). Optional
// token-bucket throttling (429 + Retry-After + x-ms-ratelimit-remaining-subscription-*).
// ARM requires a bearer token from the emulator's AAD with the ARM audience.
//
// IMDS serves tokens only for identities assigned to that host's VM/VMSS in ARM state, after
// Timing.IMDSPropagation; tokens are cached per (identity, resource). Limits: IMDSLimits.
//
// Observation and control: Counters/Count/ResetCounters (exact per service, operation,
// resource, identity, status), AddFault/ClearFaults, SetThrottling, SetIMDSLimits, and
// out-of-band changes (AssignIdentity, RemoveIdentity, CreateIdentity, DeleteIdentity,
// SetProvisioningState). The same are served by the admin HTTP API at AdminURL. Every call is
// logged at V(1) on Config.Logger.
package emulator
