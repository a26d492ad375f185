// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat: statistics and events of the dirtyring module over its
// generic netlink family, in the spirit of kvm_stat (see --help).
#include <string>
#include <vector>

#include "tool.hpp"

int main(int argc, char** argv) {
    return dirtyring::stat::run(std::vector<std::string>(argv + 1, argv + argc));
}
