# `cmake --install BUILD --prefix P`: the program, both libraries, the header, a relocatable
# nlsr.pc, the CMake package (find_package(nlsr): nlsr::nlsr, nlsr::nlsr_static), the man
# pages, the bash completion and the license. tests/test_install.sh builds examples/api.c
# against the result both ways.
include(CMakePackageConfigHelpers)

install(TARGETS nlsr nlsr_shared nlsr_cli EXPORT nlsrTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# nlsr.pc finds the prefix from its own place (${pcfiledir}), so an installed tree can move.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(NLSR_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(NLSR_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH NLSR_PC_UP "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" NLSR_PC_UP "${NLSR_PC_UP}")
  set(NLSR_PC_PREFIX "\${pcfiledir}/${NLSR_PC_UP}")
  set(NLSR_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(NLSR_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(NLSR_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(nlsr.pc.in nlsr.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/nlsr.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

set(NLSR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/nlsr)
install(EXPORT nlsrTargets NAMESPACE nlsr:: DESTINATION ${NLSR_CMAKE_DIR})
configure_package_config_file(cmake/nlsrConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/nlsrConfig.cmake
                              INSTALL_DESTINATION ${NLSR_CMAKE_DIR})
# SONAME majors are ABI lines: a request for 0.1 accepts any 0.x at or above it.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/nlsrConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/nlsrConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/nlsrConfigVersion.cmake
        DESTINATION ${NLSR_CMAKE_DIR})

install(FILES man/nlsr.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES man/nlsr.3 DESTINATION ${CMAKE_INSTALL_MANDIR}/man3)
install(FILES completions/nlsr DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)
install(FILES LICENSE CHANGELOG.md README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
