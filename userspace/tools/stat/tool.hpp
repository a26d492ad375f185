// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat as a function: the whole tool but main().
#pragma once

#include <string>
#include <vector>

namespace dirtyring::stat {

// Runs the tool with argv[1..]; returns its exit code (options.hpp).
int run(const std::vector<std::string>& args);

}  // namespace dirtyring::stat
