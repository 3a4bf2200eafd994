package sandbox

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// PodNetNS is the network namespace of a pod running in the sandbox (its node's for hostNetwork
// pods): dial from it (netns.Dialer) to make requests as the pod's containers do.
func (s *Sandbox) PodNetNS(pod *corev1.Pod) (string, error) {
	for _, n := range s.Nodes {
		if n.Name != pod.Spec.NodeName || n.agent == nil {
			continue
		}
		if ns, ok := n.agent.PodNetNS(pod.UID); ok {
			return ns, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s (uid %s) has no network on node %q yet: wait until it is Running", pod.Namespace, pod.Name, pod.UID, pod.Spec.NodeName)
}
