// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat as a user runs it on a host without the module: usage
// errors, --help, --version, and "the family is not registered" (exit 3),
// which is real here: the development hosts cannot load the module.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "netlink.hpp"

namespace {

struct ToolRun {
    int code;
    std::string output;
};

// Runs the tool with `args` (a shell word list), output and errors together.
ToolRun run_tool(const std::string& args) {
    const std::string cmd = std::string(DIRTYRING_STAT) + " " + args + " 2>&1 </dev/null";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return {-1, "popen failed"};
    std::string out;
    std::array<char, 4096> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

bool family_registered() {
    try {
        dirtyring::stat::Netlink nl;
        return true;
    } catch (const dirtyring::stat::FamilyError& e) {
        return e.reason() != dirtyring::stat::FamilyError::Reason::NotRegistered;
    }
}

TEST(StatTool, Help) {
    const ToolRun r = run_tool("--help");
    EXPECT_EQ(0, r.code);
    EXPECT_EQ(0U, r.output.find("usage: dirtyring-stat")) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("Exit codes:")) << r.output;
}

TEST(StatTool, Version) {
    const ToolRun r = run_tool("--version");
    EXPECT_EQ(0, r.code);
    EXPECT_NE(std::string::npos, r.output.find("netlink family dirtyring version 1")) << r.output;
}

TEST(StatTool, UsageErrorsExit2) {
    for (const char* args :
         {"--turbo", "--interval", "--interval 0", "--vm x", "--events --once"}) {
        const ToolRun r = run_tool(args);
        EXPECT_EQ(2, r.code) << args << ": " << r.output;
        EXPECT_EQ(0U, r.output.find("dirtyring-stat: ")) << r.output;
        EXPECT_NE(std::string::npos, r.output.find("usage: dirtyring-stat")) << r.output;
    }
}

TEST(StatTool, FamilyNotRegisteredExits3) {
    if (family_registered()) GTEST_SKIP() << "the dirtyring netlink family is registered here";
    for (const char* args : {"--once", "--once --json", "--events", "--vm 3 --interval 0.01", ""}) {
        const ToolRun r = run_tool(args);
        EXPECT_EQ(3, r.code) << args << ": " << r.output;
        EXPECT_EQ(
            "dirtyring-stat: the dirtyring netlink family is not registered: is the module "
            "loaded?\n",
            r.output)
            << args;
    }
}

}  // namespace
