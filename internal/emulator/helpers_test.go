package emulator

import (
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/golang-jwt/jwt/v5"
)

type (
	armcomputeVMUpdate   = armcompute.VirtualMachineUpdate
	armcomputeVMIdentity = armcompute.VirtualMachineIdentity
	armcomputeUAValue    = armcompute.UserAssignedIdentitiesValue
)

const (
	uaType   = armcompute.ResourceIdentityTypeUserAssigned
	noneType = armcompute.ResourceIdentityTypeNone
)

func jwtNew(alg string, claims map[string]any) *jwt.Token {
	return jwt.NewWithClaims(jwt.GetSigningMethod(alg), jwt.MapClaims(claims))
}

// newNoRetryVMClient is a VM client that does not retry, to observe injected failures.
func newNoRetryVMClient(e *Emulator) (*armcompute.VirtualMachinesClient, error) {
	cred, err := e.PrincipalCredential(testApp)
	if err != nil {
		return nil, err
	}
	o := e.ARMClientOptions()
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	return armcompute.NewVirtualMachinesClient(e.Config().SubscriptionID, cred, (*arm.ClientOptions)(o))
}
