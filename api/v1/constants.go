package v1

// Names shared with aad-pod-identity v1: changing any of them breaks existing manifests,
// clients and stored objects.
const (
	// PodLabelKey is the pod label whose value must equal an AzureIdentityBinding's spec.selector.
	PodLabelKey = "aadpodidbinding"

	// BehaviorKey is the AzureIdentity annotation that switches that one identity to namespaced
	// matching when its value is BehaviorNamespaced.
	BehaviorKey = "aadpodidentity.k8s.io/Behavior"
	// BehaviorNamespaced is the value of BehaviorKey that turns on namespaced matching.
	BehaviorNamespaced = "namespaced"

	// AssignedIdentityNodeLabel labels every AzureAssignedIdentity with its node's name, so that
	// NMI can watch only its own node's objects (CRDs have no field selectors).
	AssignedIdentityNodeLabel = "nodename"

	// AssignedIdentityFinalizer keeps an AzureAssignedIdentity until MIC has released the
	// identity from the node's VM or VM scale set.
	AssignedIdentityFinalizer = "azureassignedidentity.finalizers.aadpodidentity.k8s.io"

	// ForceNamespacedEnv is the environment variable that, set to "true", turns on namespaced
	// mode in MIC and NMI like the --forceNamespaced flag.
	ForceNamespacedEnv = "FORCENAMESPACED"
)

// AssignedIdentityState is the life-cycle state of an AzureAssignedIdentity (status.status).
type AssignedIdentityState string

const (
	// AssignedIDCreated: the object exists, the identity is not (yet) on the VM/VMSS.
	AssignedIDCreated AssignedIdentityState = "Created"
	// AssignedIDAssigned: the identity is on the VM/VMSS and NMI may serve tokens for it.
	AssignedIDAssigned AssignedIdentityState = "Assigned"
	// AssignedIDUnassigned: the identity was released; the object is about to be deleted.
	AssignedIDUnassigned AssignedIdentityState = "Unassigned"
)

// IsAssigned reports whether NMI may serve tokens for an AzureAssignedIdentity in state s. The empty
// state comes from objects written before states existed (aad-pod-identity < 1.5), which upstream
// treats as assigned; so do we.
func (s AssignedIdentityState) IsAssigned() bool {
	return s == AssignedIDAssigned || s == ""
}
